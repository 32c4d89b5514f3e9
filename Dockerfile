# The callmesh node image: `docker build -t callmesh:0.1.0 .` (the k8s base names it callmesh:0.1.0;
# point the overlays' `images:` at your registry). Runtime dependencies only, pinned by
# constraints.txt; runs as an unprivileged user; SIGTERM goes straight to the node (exec form).
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY registry ./registry
COPY protos ./protos
COPY node ./node
COPY loadtest ./loadtest
COPY media ./media
COPY sip ./sip
COPY chaos ./chaos
RUN python -m venv /opt/callmesh \
    && /opt/callmesh/bin/pip install -c constraints.txt .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/callmesh/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/callmesh /opt/callmesh
# the IVR's recorded prompts, where node/prompts.py looks (beside the installed node package),
# and the sample hook scripts (mawk, which the menu needs, is in every Debian image)
COPY prompts /opt/callmesh/lib/python3.11/site-packages/prompts
COPY hooks /usr/share/callmesh/hooks
RUN groupadd --system --gid 10001 callmesh \
    && useradd --system --uid 10001 --gid callmesh --home-dir /var/lib/callmesh callmesh \
    && mkdir -p /var/lib/callmesh /etc/callmesh \
    && chown callmesh:callmesh /var/lib/callmesh
USER 10001:10001
WORKDIR /var/lib/callmesh
EXPOSE 8080 7070
ENTRYPOINT ["callmesh"]
CMD ["node", "--config", "/etc/callmesh/node.toml"]
