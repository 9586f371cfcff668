//! IP addresses as the programs build them for map keys.

/// An IPv4 (first 4 bytes, rest zero) or IPv6 address, held as two 64-bit
/// words so that zeroing and filling it compile to plain stores: as a byte
/// array LLVM zeroes the bytes an IPv4 address leaves unset through a
/// byte-at-a-time memset subprogram, ~60 instructions per address on every
/// packet.
#[derive(Clone, Copy)]
pub struct Addr([u64; 2]);

impl Addr {
    pub const ZERO: Addr = Addr([0; 2]);

    #[inline(always)]
    pub fn v4(b: &[u8]) -> Addr {
        Addr([u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0]), 0])
    }

    #[inline(always)]
    pub fn v6(b: &[u8]) -> Addr {
        Addr([
            u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        ])
    }

    /// The address in network order, as the flow key stores it.
    #[inline(always)]
    pub fn bytes(self) -> [u8; 16] {
        // SAFETY: same size, and every bit pattern is a valid [u8; 16].
        unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(self.0) }
    }
}
