"""Drives a mantle node with NVIDIA's tritonclient, the way a KServe V2 user
would: health, readiness and metadata, then one photo classified with binary
tensors and again with JSON tensors.

Usage: kserve_client.py URL API_KEY IMAGE OUT_DIR

Writes OUT_DIR/input.f32 (the tensor sent, little-endian float32) and prints
one JSON object with what the server answered.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

MODEL = "efficientnet-lite0"


def preprocess(path):
    """Shorter side to 256, centre 224x224 crop, (x - 127) / 128, NCHW."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    pixels = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return pixels.transpose(2, 0, 1)[np.newaxis].copy()


def classify(client, headers, tensor, binary):
    request = httpclient.InferInput("input", list(tensor.shape), "FP32")
    request.set_data_from_numpy(tensor, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("logits", binary_data=binary)
    # A fresh dict: tritonclient adds Inference-Header-Content-Length to the
    # one it is given, which would then mislabel the next request.
    result = client.infer(MODEL, [request], outputs=[wanted], headers=dict(headers))
    logits = result.as_numpy("logits")
    return {"shape": list(logits.shape), "logits": logits.reshape(-1).tolist(), "response": result.get_response()}


def main():
    url, key, image, out_dir = sys.argv[1:5]
    headers = {"Authorization": f"Bearer {key}"}
    client = httpclient.InferenceServerClient(url=url, connection_timeout=30.0, network_timeout=60.0)
    tensor = preprocess(image)
    Path(out_dir, "input.f32").write_bytes(tensor.astype("<f4").tobytes())
    answer = {
        "server_live": client.is_server_live(headers=headers),
        "server_ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(MODEL, headers=headers),
        "metadata": client.get_model_metadata(MODEL, headers=headers),
        "binary": classify(client, headers, tensor, binary=True),
        "json": classify(client, headers, tensor, binary=False),
    }
    client.close()
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
