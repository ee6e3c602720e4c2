#!/usr/bin/env python3
"""Shrinks a Spin component built by cargo: runs binaryen's `wasm-opt -Oz`
on its main core module and writes the component back in place. (`-Oz`
rather than `-Os`: about 7 KB less per component; a request's time is in
its SQL, not in the few instructions -Os would keep.)

Why: rustc's wasm output, even with `opt-level = "s"` and LTO, is about a
fifth larger than binaryen makes it, and a component should stay under
1 MB (it is compiled at every `spin up` and shipped to every node). A
component is a sequence of sections; a core module is one section (id 1)
holding a whole module, so swapping in the optimised module only changes
that section's length. Imports and exports are untouched by wasm-opt.

Usage: optimize-wasm.py COMPONENT.wasm [...]
Without `wasm-opt` on PATH (Debian package `binaryen`) it warns and
leaves the file as it is. An already optimised file (its digest is in
the `.optimized` stamp beside it) is left alone, so a no-op
`spin build` stays fast.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

# Features rustc enables for wasm32-wasip2; binaryen must accept them
# and may not introduce others.
FEATURES = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-multivalue",
    "--enable-reference-types",
]
# Core modules below this are the component's small shims: not worth it.
MIN_MODULE_BYTES = 64 * 1024


def read_leb(data, i):
    result, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def write_leb(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sections(data):
    """Yields (id, start of content, end of content) of each section."""
    i = 8
    while i < len(data):
        section_id = data[i]
        size, start = read_leb(data, i + 1)
        yield section_id, start, start + size
        i = start + size


def optimize_module(module, wasm_opt):
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "in.wasm")
        target = os.path.join(tmp, "out.wasm")
        with open(source, "wb") as f:
            f.write(module)
        subprocess.run([wasm_opt, "-Oz", *FEATURES, source, "-o", target], check=True)
        with open(target, "rb") as f:
            return f.read()


def digest(data):
    return hashlib.sha256(data).hexdigest()


def optimize(path, wasm_opt):
    with open(path, "rb") as f:
        data = f.read()
    stamp = path + ".optimized"
    if os.path.exists(stamp) and open(stamp).read().strip() == digest(data):
        return
    if data[:4] != b"\0asm" or data[4:8] != b"\x0d\x00\x01\x00":
        sys.exit(f"{path}: not a WebAssembly component")
    out = bytearray(data[:8])
    for section_id, start, end in sections(data):
        content = data[start:end]
        if section_id == 1 and len(content) >= MIN_MODULE_BYTES:
            content = optimize_module(content, wasm_opt)
        out.append(section_id)
        out += write_leb(len(content))
        out += content
    # Replace, not rewrite: cargo's own copy (a hard link) stays as built.
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(out)
    os.replace(temporary, path)
    with open(stamp, "w") as f:
        f.write(digest(bytes(out)) + "\n")
    print(f"{path}: {len(data):,} -> {len(out):,} bytes")


def main():
    wasm_opt = shutil.which("wasm-opt")
    if wasm_opt is None:
        print(
            "warning: wasm-opt (Debian package binaryen) not found; components are not shrunk",
            file=sys.stderr,
        )
        return
    for path in sys.argv[1:]:
        optimize(path, wasm_opt)


if __name__ == "__main__":
    main()
