# The GPU worker image: `hch` built against a CUDA libtorch 2.11, with that libtorch and the
# NVIDIA runtime libraries from the PyPI wheels (torch's nvidia-* dependencies). Built on
# request (`scripts/images.sh gpu`, on a machine with the CUDA wheels), never in CI, and
# untested on this project's machines: no GPU and no NVIDIA container runtime here.
#
# The build context holds `libtorch/lib` (the CUDA libtorch's libraries plus the nvidia-*
# wheels' lib directories, flattened) and `hch`, prepared by scripts/images.sh. Run it with the
# NVIDIA container runtime (Kubernetes: the device plugin; deploy/overlays/gpu).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN groupadd --gid 10001 hch && useradd --uid 10001 --gid 10001 --no-create-home \
        --shell /usr/sbin/nologin hch
COPY libtorch/lib /opt/libtorch/lib
ENV LD_LIBRARY_PATH=/opt/libtorch/lib
# What the NVIDIA container runtime reads to mount the driver into the container.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY hch /usr/local/bin/hch
USER 10001:10001
EXPOSE 50051 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hch"]
CMD ["worker", "--help"]
