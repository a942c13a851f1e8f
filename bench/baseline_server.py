"""The usual alternative to mantle's image-classify: a FastAPI app served by
uvicorn, decoding with Pillow and running EfficientNet-Lite0 with
onnxruntime, written as model-serving write-ups write it. bench/run.py
starts it with as many uvicorn workers as mantle has inference threads,
each with a one-thread onnxruntime session.

    uvicorn --app-dir bench baseline_server:app --workers 2

POST /classify with PNG or JPEG bytes answers the same JSON as mantle's
image-classify guest: {"top": [{"index", "label", "score"}, ...]}.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image, UnidentifiedImageError

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", Path(__file__).resolve().parent.parent / "models" / "efficientnet-lite0"))
RESIZE_TO = 256
CROP = 224
TOP_K = 5

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("BASELINE_THREADS", "1"))
options.inter_op_num_threads = 1
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])
labels = {int(k): v.split(",")[0].strip() for k, v in json.loads((MODEL_DIR / "labels.json").read_text()).items()}
app = FastAPI()


def preprocess(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body)).convert("RGB")
    width, height = image.size
    scale = RESIZE_TO / min(width, height)
    width, height = max(RESIZE_TO, round(width * scale)), max(RESIZE_TO, round(height * scale))
    image = image.resize((width, height), Image.BILINEAR)
    left, top = (width - CROP) // 2, (height - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return pixels.transpose(2, 0, 1)[np.newaxis]


@app.post("/classify")
async def classify(request: Request):
    body = await request.body()
    try:
        batch = preprocess(body)
    except (UnidentifiedImageError, OSError) as error:
        raise HTTPException(status_code=400, detail=f"cannot decode the image: {error}")
    (logits,) = session.run(None, {"input": batch})
    exps = np.exp(logits[0] - logits[0].max())
    probabilities = exps / exps.sum()
    top = np.argsort(-probabilities)[:TOP_K]
    return {"top": [{"index": int(i), "label": labels[int(i)], "score": float(probabilities[i])} for i in top]}
