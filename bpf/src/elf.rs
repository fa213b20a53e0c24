//! Just enough ELF (System V gABI, 64-bit little-endian) to check what `build.rs` produced: the
//! section names of an eBPF object.

/// `EM_BPF`: the machine of eBPF objects.
const EM_BPF: u16 = 247;
/// `\x7fELF`.
const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];
/// `ELFCLASS64`.
const ELF_CLASS_64: u8 = 2;
/// `ELFDATA2LSB`.
const ELF_DATA_LSB: u8 = 1;
/// Size of one section header in a 64-bit object.
const SECTION_HEADER_LEN: usize = 64;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
}

/// The section names of a 64-bit little-endian eBPF ELF object; `None` for anything else or a
/// malformed file.
pub fn bpf_sections(object: &[u8]) -> Option<Vec<String>> {
    if object.get(..4)? != ELF_MAGIC
        || *object.get(4)? != ELF_CLASS_64
        || *object.get(5)? != ELF_DATA_LSB
        || u16_at(object, 18)? != EM_BPF
    {
        return None;
    }
    let table = u64_at(object, 40)?;
    let count = usize::from(u16_at(object, 60)?);
    let names_index = usize::from(u16_at(object, 62)?);
    let header = |i: usize| {
        object
            .get(table + i * SECTION_HEADER_LEN..)?
            .get(..SECTION_HEADER_LEN)
    };
    let names = header(names_index)?;
    let names_at = u64_at(names, 24)?;
    let names_len = u64_at(names, 32)?;
    let strings = object.get(names_at..names_at.checked_add(names_len)?)?;
    (0..count)
        .map(|i| {
            let name_at = usize::try_from(u32_at(header(i)?, 0)?).ok()?;
            let rest = strings.get(name_at..)?;
            let end = rest.iter().position(|&c| c == 0)?;
            String::from_utf8(rest[..end].to_vec()).ok()
        })
        .collect()
}
