# Bifröst as a small image: the service and its dependencies in a virtualenv on Python's slim
# image, run as a non-root user with `python -m bifrost`, configured by the environment.
#
#   docker build -t bifrost .
#   docker run --rm -p 8080:8080 -e JWT_SECRET="$(openssl rand -base64 48)" bifrost
#
# Several workers need Redis: -e BIFROST_WORKERS=4 -e BIFROST_REDIS_URL=redis://host:6379/0

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Every dependency ships a binary wheel: no compiler is needed, here or in the final stage.
RUN python -m venv /opt/bifrost
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bifrost ./bifrost
RUN /opt/bifrost/bin/pip install --no-cache-dir .


FROM python:3.11-slim

RUN groupadd --system --gid 10001 bifrost \
    && useradd --system --uid 10001 --gid bifrost --no-create-home --shell /usr/sbin/nologin bifrost
COPY --from=build /opt/bifrost /opt/bifrost

# HOST and PORT: where to listen (platforms such as Fly route to 0.0.0.0:$PORT).
# BIFROST_WORKERS: worker processes; more than one needs BIFROST_REDIS_URL.
# The graceful shutdown (sockets closed with 1012, broadcasts in flight answered) fits in
# Docker's default 10 s between SIGTERM and SIGKILL, and in fly.toml's kill_timeout.
ENV PATH="/opt/bifrost/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    BIFROST_WORKERS=1 \
    SANIC_GRACEFUL_SHUTDOWN_TIMEOUT=8

# A `.env` mounted here is read too; the environment wins.
WORKDIR /app
# Numeric, so that a platform can check it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]

# Exec form, no shell: SIGTERM reaches the service itself, which closes every socket with 1012.
ENTRYPOINT ["python", "-m", "bifrost"]
