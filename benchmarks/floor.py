"""Where the time of a commit and a checkout goes: the parts, each measured on its own.

    python -m benchmarks.floor ADAPTER_DIR

For a PEFT adapter directory (e.g. one made by benchmarks.common.make_adapter):
SHA-256 of every tensor (the ids), the byte-plane split and join (numpy
shifts, against the transposing copy they replaced), zstd of the exponent
planes, and the start-up of the processes (Python, mfgit's imports, numpy,
GitPython). Not a comparison with another tool: it shows what any
content-addressed, compressed commit of these bytes costs on this machine,
against which `python -m benchmarks storage` can be read. bf16 adapters.
"""
import hashlib, os, subprocess, sys, time
import numpy as np
from mfgit.formats import safetensors as st
from mfgit.store import codec

path = os.path.join(sys.argv[1], "adapter_model.safetensors")
h = st.read_header(path)
fd = os.open(path, os.O_RDONLY)
raws = [os.pread(fd, i.nbytes, h.data_offset + i.start) for i in h.tensors.values()]
total = sum(map(len, raws))

def best(fn, reps=3):
    out = 9e9
    for _ in range(reps):
        t = time.perf_counter(); fn(); out = min(out, time.perf_counter() - t)
    return out * 1000

print(f"{len(raws)} tensors, {total / 1e6:.0f} MB")
print(f"sha256 (hashlib), one core: {best(lambda: [hashlib.sha256(r).digest() for r in raws]):.0f} ms")
M = max(map(len, raws)); buf = np.empty(M, np.uint8)
def transpose():
    for r in raws:
        n = len(r) // 2; np.copyto(buf[:2 * n].reshape(2, n), np.frombuffer(r, np.uint8).reshape(n, 2).T)
def shifts():
    for r in raws:
        n = len(r) // 2; codec.split_planes(r, 2, buf[:2 * n].reshape(2, n))
print(f"split planes, transposing copy: {best(transpose):.0f} ms; shifts: {best(shifts):.0f} ms")
planes = [(np.frombuffer(r, np.uint8)[0::2].copy(), np.frombuffer(r, np.uint8)[1::2].copy()) for r in raws]
out = bytearray(M)
def join_strided():
    for lo, hi in planes:
        t = np.frombuffer(out, np.uint8, count=2 * lo.size).reshape(lo.size, 2); t[:, 0] = lo; t[:, 1] = hi
def join_shift():
    for lo, hi in planes:
        codec.join_planes([lo, hi], 2, memoryview(out)[: 2 * lo.size])
print(f"join planes, strided copy: {best(join_strided):.0f} ms; shifts: {best(join_shift):.0f} ms")
cctx = codec._plane_compressor()
his = [p[1].tobytes() for p in planes]
print(f"zstd of the exponent planes ({sum(map(len, his)) / 1e6:.0f} MB), one core: {best(lambda: [cctx.compress(x) for x in his]):.0f} ms")

def proc(code):
    ts = []
    for _ in range(7):
        t = time.perf_counter(); subprocess.run([sys.executable, "-c", code], check=True); ts.append(time.perf_counter() - t)
    return sorted(ts)[3] * 1000
base = proc("pass")
cli = proc("import mfgit.cli.main, mfgit.api.repository")
print(f"python start-up {base:.0f} ms; + mfgit CLI and repository imports {cli - base:.0f} ms; "
      f"+ numpy {proc('import mfgit.cli.main, mfgit.api.repository, numpy') - cli:.0f} ms; "
      f"+ GitPython {proc('import mfgit.cli.main, mfgit.api.repository, git') - cli:.0f} ms (medians of 7 processes)")
