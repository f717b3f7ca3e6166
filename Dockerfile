# Two stages: the first installs requirements.txt into a virtualenv; the image gets only that
# virtualenv and the service's own files (the build context is cut down by .dockerignore), and
# runs as an unprivileged user that cannot change them.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM python:3.11-slim
# A numeric user (10001), so an orchestrator's "run as non-root" check can verify it.
RUN groupadd --system --gid 10001 gcp \
    && useradd --system --uid 10001 --gid gcp --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gcp
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . .
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PORT=8080 \
    GCP_LOCAL_DIR=/tmp/gcp MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 8080
CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
