FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV PYTHONUNBUFFERED=1 PORT=8080
EXPOSE 8080
CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
