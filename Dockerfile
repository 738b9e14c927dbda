# The worker image: dependencies from the hash-checked lock (scripts/lock writes
# it), the project built with the locked setuptools, run as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv
# Alone first, so that a code change does not reinstall the dependencies.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY app app
COPY agents agents
COPY tables tables
RUN pip install --no-deps --no-build-isolation . && rm -rf build

# A fixed numeric id: Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN useradd --system --uid 10001 --user-group --home-dir /srv --shell /usr/sbin/nologin accountant \
    && mkdir /data && chown accountant:accountant /data
USER 10001:10001
ENV ACCOUNTANT_DATA_DIR=/data
VOLUME /data

EXPOSE 6066
# No curl in the image: Python asks /healthz (app/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["accountant", "worker"]
