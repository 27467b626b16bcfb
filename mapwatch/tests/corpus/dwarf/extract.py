#!/usr/bin/env python3
"""Makes the dwarf fuzz target's seeds from a Go binary: the wanted struct DIEs (with
their members), verbatim, in one small unit. Format (fuzz/fuzz_targets/dwarf.rs): six
(u16 LE length, bytes) pairs — .debug_abbrev, .debug_str, .debug_line,
.debug_str_offsets, .debug_addr, .debug_line_str — then .debug_info.

    extract.py GO_BINARY OUT STRUCT...

Needs binutils (objcopy, readelf). Member DW_AT_type values are DW_FORM_ref_addr into
the original .debug_info: left as they are (the parser does not follow them).
"""
import re
import struct
import subprocess
import sys
import tempfile


def section(binary, name):
    with tempfile.TemporaryDirectory() as tmp:
        plain, out = f"{tmp}/plain", f"{tmp}/section"
        subprocess.run(["objcopy", "--decompress-debug-sections", binary, plain], check=True)
        subprocess.run(["objcopy", f"--dump-section={name}={out}", plain, f"{tmp}/unused"],
                       check=True)
        return open(out, "rb").read()


def main(binary, out, wanted):
    info = section(binary, ".debug_info")
    abbrev = section(binary, ".debug_abbrev")
    dump = subprocess.run(["readelf", "--debug-dump=info", binary], check=True,
                          capture_output=True, text=True).stdout
    # Top-level DIEs (depth 1) in order: (offset, first attribute line).
    dies = [(int(m[1], 16), m[2]) for m in
            re.finditer(r"^ <1><([0-9a-f]+)>: Abbrev Number: \d+ \((\w+)\)", dump, re.M)]
    names = dict(re.findall(r"^ <1><([0-9a-f]+)>: Abbrev Number: \d+ \(DW_TAG_structure_type\)\n"
                            r"\s+<[0-9a-f]+>\s+DW_AT_name\s+: (.+)$", dump, re.M))
    version = int(re.search(r"Version:\s+(\d+)", dump)[1])
    producer = re.search(r"DW_AT_producer\s+: (.+)$", dump, re.M)[1]
    body = bytearray()
    # The compile_unit form without a line program (abbrev 2 in Go's fixed table):
    # name, language, comp_dir, producer, DW_AT_go_package_name — all inline strings
    # but the language.
    body += b"\x02runtime\x00\x16.\x00" + producer.encode() + b"\x00runtime\x00"
    for want in wanted:
        for i, (offset, tag) in enumerate(dies):
            if tag == "DW_TAG_structure_type" and names.get(f"{offset:x}") == want:
                body += info[offset:dies[i + 1][0]]
                break
        else:
            sys.exit(f"{want}: no such struct in {binary}")
    body += b"\x00"
    if version >= 5:  # unit_type DW_UT_compile, address size, abbrev offset
        header = struct.pack("<HBBI", 5, 1, 8, 0)
    else:  # abbrev offset, address size
        header = struct.pack("<HIB", version, 0, 8)
    unit = struct.pack("<I", len(header) + len(body)) + header + body
    seed = struct.pack("<H", len(abbrev)) + abbrev + b"\x00\x00" * 5 + unit
    open(out, "wb").write(seed)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
