# Bone X-ray Classifier: Streamlit app on CPU TensorFlow.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

RUN useradd --create-home --uid 10001 app
WORKDIR /app

# The same install step as the README's: pip install -r requirements.txt
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=app:app app.py ./
COPY --chown=app:app utils ./utils
COPY --chown=app:app ui ./ui
COPY --chown=app:app pages ./pages
COPY --chown=app:app model ./model
COPY --chown=app:app .streamlit ./.streamlit

# The numeric id of the user created above: a name may not resolve on the host (hadolint DL3066).
USER 10001
EXPOSE 8501
# Healthy when the server answers and the model bundle matches its metadata (ui/healthcheck.py):
# Streamlit's /_stcore/health alone stays "ok" when the model is missing or damaged.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ui.healthcheck", "--url", "http://127.0.0.1:8501"]

CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]
