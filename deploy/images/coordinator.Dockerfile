# The coordinator image: `hch` built without libtorch (cargo feature `model` off), nothing else.
#
# The build context holds the binary (`hch`), prepared by scripts/images.sh, which builds it on
# the host. BASE is any Debian bookworm root: scripts/images.sh makes one from Debian's packages
# with debootstrap (hch-base:bookworm) where no image registry can be reached; elsewhere
# debian:bookworm-slim does the same.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# One non-root user; the process is PID 1 and drains on SIGTERM (hch handles it).
RUN groupadd --gid 10001 hch && useradd --uid 10001 --gid 10001 --no-create-home \
        --shell /usr/sbin/nologin hch
COPY hch /usr/local/bin/hch
USER 10001:10001
EXPOSE 50050 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hch"]
CMD ["coordinator", "--listen=0.0.0.0:50050", "--admin-listen=0.0.0.0:9100", "--help"]
