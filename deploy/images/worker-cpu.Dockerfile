# The CPU worker and trainer image: `hch` with the distilled models, and the CPU libtorch it
# links (carved out of the PyPI torch wheel by scripts/setup-libtorch.sh).
#
# The build context holds `libtorch/lib` and `hch`, prepared by scripts/images.sh. libtorch is
# its own layer, below the binary: a new build of hch ships only the small layer.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN groupadd --gid 10001 hch && useradd --uid 10001 --gid 10001 --no-create-home \
        --shell /usr/sbin/nologin hch
COPY libtorch/lib /opt/libtorch/lib
ENV LD_LIBRARY_PATH=/opt/libtorch/lib
COPY hch /usr/local/bin/hch
USER 10001:10001
EXPOSE 50051 50060 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hch"]
CMD ["worker", "--help"]
