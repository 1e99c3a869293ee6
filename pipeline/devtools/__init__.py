"""Development helpers outside the runtime path: a moto S3 endpoint on 127.0.0.1 and a
headless-Chromium screenshot of a report. The job and the report never import them."""
