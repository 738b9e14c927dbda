FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY agents agents
COPY tables tables
RUN pip install --no-cache-dir .
EXPOSE 6066
CMD ["accountant", "worker"]
