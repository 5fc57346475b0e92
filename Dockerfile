# One image for every Seed IDP service; pick the service with the container args,
# e.g. `docker run ghcr.io/seed-idp/idp:latest services.catalog`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# Runtime dependencies only: no dev extras.
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    IDP_HTTP_HOST=0.0.0.0 \
    IDP_HTTP_PORT=8080
RUN groupadd --system --gid 10001 idp \
 && useradd --system --uid 10001 --gid idp --home-dir /home/idp --create-home --shell /usr/sbin/nologin idp
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/idp
EXPOSE 8080
ENTRYPOINT ["python", "-m"]
# No default service: compose `command` / Kubernetes `args` name one, e.g. ["services.catalog"].
