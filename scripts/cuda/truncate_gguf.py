"""Copies a GGUF keeping only its first N transformer blocks (`blk.0` .. `blk.N-1`),
with `<arch>.block_count` set to N, a Q8_0 token embedding requantized to Q4_0, and
every other key and tensor byte-for-byte.

Why: the GPU machine takes at most 64 MiB per upload, and SmolLM2-135M Q4_1 is 98 MB;
a 6-block copy is a real-weights model on which the CUDA and CPU greedy ids must agree.
usage: python3 truncate_gguf.py IN OUT N   (needs the `gguf` package from PyPI)
"""
import sys

import gguf


def main(src, dst, n):
    r = gguf.GGUFReader(src)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(dst, arch=arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == f"{arch}.block_count":
            w.add_uint32(name, n)
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                vals = [field.parts[i].tolist()[0] for i in field.data]
            w.add_key_value(name, vals, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_key_value(name, bytes(field.parts[-1]).decode("utf-8", errors="surrogateescape"), vtype)
        else:
            w.add_key_value(name, field.parts[-1].tolist()[0], vtype)
    for t in r.tensors:
        if t.name.startswith("blk."):
            if int(t.name.split(".")[1]) >= n:
                continue
        if t.name == "token_embd.weight" and t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            # The Q8_0 embedding is a third of the file: Q4_0 halves it.
            q4 = gguf.GGMLQuantizationType.Q4_0
            data = gguf.quants.quantize(gguf.quants.dequantize(t.data, t.tensor_type), q4)
            w.add_tensor(t.name, data, raw_dtype=q4)
            continue
        # Quantized data comes as bytes [rows, row_bytes]; the writer derives the shape.
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
