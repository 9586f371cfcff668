//! Just enough of the kernel's BTF (/sys/kernel/btf/vmlinux) to find where
//! a struct member lives, so programs that read kernel structs (fentry and
//! kprobe tiers) get their offsets from the running kernel at load time,
//! never from a hard-coded layout.
//!
//! Format: a header, then type records, then strings
//! (<https://docs.kernel.org/bpf/btf.html>).

use std::{collections::HashMap, fs, path::Path};

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Structs and unions one member lookup visits at most: anonymous members
/// that name their own struct (a malformed blob) would otherwise make the
/// search exponential in its depth.
const MAX_VISITS: u32 = 10_000;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
}

struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

struct Composite {
    members: Vec<Member>,
}

/// Structs and unions of a BTF blob, by type id.
pub struct Btf {
    composites: HashMap<u32, Composite>,
    by_name: HashMap<String, u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_off = u32_at(8).ok_or(BtfError::Malformed("short header"))? as usize;
        let type_len = u32_at(12).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_off = u32_at(16).ok_or(BtfError::Malformed("short header"))? as usize;
        let str_len = u32_at(20).ok_or(BtfError::Malformed("short header"))? as usize;
        let types = hdr_len + type_off;
        let strings = hdr_len + str_off;
        if types + type_len > data.len() || strings + str_len > data.len() {
            return Err(BtfError::Malformed("sections past the end"));
        }
        // In bounds: checked just above.
        let string_section = &data[strings..strings + str_len];
        let name = |off: u32| -> Result<String, BtfError> {
            let rest = string_section
                .get(off as usize..)
                .ok_or(BtfError::Malformed("name offset past the string section"))?;
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        };

        let mut composites = HashMap::new();
        let mut by_name = HashMap::new();
        let mut pos = types;
        let mut id = 1u32;
        while pos < types + type_len {
            let name_off = u32_at(pos).ok_or(BtfError::Malformed("truncated type"))?;
            let info = u32_at(pos + 4).ok_or(BtfError::Malformed("truncated type"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,          // int, var, decl_tag
                3 => 12,                   // array
                4 | 5 => 12 * vlen,        // struct, union
                6 | 13 => 8 * vlen,        // enum, func_proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let at = pos + 12 * m;
                    let (Some(m_name), Some(m_type), Some(m_off)) =
                        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
                    else {
                        return Err(BtfError::Malformed("truncated member"));
                    };
                    members.push(Member {
                        name: name(m_name)?,
                        type_id: m_type,
                        // With kind_flag the top 8 bits are a bitfield size.
                        bit_offset: if kind_flag {
                            m_off & 0x00ff_ffff
                        } else {
                            m_off
                        },
                    });
                }
                let type_name = name(name_off)?;
                if kind == KIND_STRUCT && !type_name.is_empty() {
                    by_name.entry(type_name).or_insert(id);
                }
                composites.insert(id, Composite { members });
            }
            pos += extra;
            id += 1;
        }
        Ok(Self {
            composites,
            by_name,
        })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// unions and structs (as C does).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut budget = MAX_VISITS;
        self.find(id, member, 0, &mut budget)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(name.to_owned(), member.to_owned()))
    }

    fn find(&self, id: u32, member: &str, depth: u32, budget: &mut u32) -> Option<u32> {
        *budget = budget.checked_sub(1)?;
        let composite = self.composites.get(&id)?;
        for m in &composite.members {
            if m.name == member {
                return Some(m.bit_offset);
            }
        }
        if depth > 8 {
            return None;
        }
        composite
            .members
            .iter()
            .filter(|m| m.name.is_empty())
            .find_map(|m| {
                let inner = self.resolve(m.type_id)?;
                self.find(inner, member, depth + 1, budget)
                    .map(|o| o.saturating_add(m.bit_offset))
            })
    }

    /// Anonymous members are referenced by type id directly (no typedefs in
    /// between for the kernel structs we read).
    fn resolve(&self, id: u32) -> Option<u32> {
        self.composites.get(&id).map(|_| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF, where there is one (skipped elsewhere).
    #[test]
    fn finds_sock_members_in_vmlinux() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("no {VMLINUX_BTF}: skipped");
            return;
        };
        // __sk_common is the first member of struct sock.
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
        let state = btf.member_offset("sock_common", "skc_state").unwrap();
        assert!(state > 0 && state < 64, "{state}");
        // sk_state is a #define, not a member; skc_state is reachable from
        // sock through the anonymous path only via __sk_common.
        assert!(btf.member_offset("tcp_sock", "srtt_us").unwrap() > 0);
        assert!(matches!(
            btf.member_offset("sock", "no_such_member"),
            Err(BtfError::NoMember(..))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all").is_err());
    }

    /// A header, then `types`, then `strings`.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = (types.len() * 4) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]); // version, flags
        for word in [24, 0, type_len, type_len, strings.len() as u32] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        for word in types {
            b.extend_from_slice(&word.to_le_bytes());
        }
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn reads_a_struct_member() {
        // struct s { int m at byte 4 }: one member, kind struct.
        let btf = Btf::parse(&blob(
            &[1, (KIND_STRUCT << 24) | 1, 8, 3, 0, 32],
            b"\0s\0m\0",
        ))
        .unwrap();
        assert_eq!(btf.member_offset("s", "m").unwrap(), 4);
    }

    /// Anonymous members that are their own struct, many times over: the
    /// lookup ends (not found), it does not search 1000^8 paths.
    #[test]
    fn self_referencing_anonymous_members_end() {
        let mut types = vec![1, (KIND_STRUCT << 24) | 1000, 8];
        for _ in 0..1000 {
            types.extend_from_slice(&[0, 1, 0]); // anonymous, type 1 (itself)
        }
        let btf = Btf::parse(&blob(&types, b"\0s\0")).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(
            btf.member_offset("s", "nothing"),
            Err(BtfError::NoMember(..))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Found by the `btf` fuzz target: a name offset past the string
    /// section panicked (slice out of range); now a clear error.
    #[test]
    fn name_offset_past_the_strings_is_an_error() {
        for (type_name, member_name) in [(0x6f69_6e67, 3), (1, 0x6f69_6e67), (u32::MAX, 0)] {
            let err = Btf::parse(&blob(
                &[type_name, (KIND_STRUCT << 24) | 1, 8, member_name, 0, 32],
                b"\0s\0m\0",
            ))
            .err()
            .expect("rejected");
            assert!(err.to_string().contains("name offset"), "{err}");
        }
    }
}
