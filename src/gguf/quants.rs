//! Dequantization of GGML tensor blocks to float32, bit for bit as gguf-py's `quants.py` does
//! it (the code transformers loads GGUF files with), which follows ggml's `dequantize_row_*`:
//! the same operations in the same order, so converted weights equal transformers' exactly.
//!
//! Types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32) and the K-quants Q2_K,
//! Q3_K, Q4_K, Q5_K, Q6_K (super-blocks of 256).
use anyhow::{bail, Result};
use half::f16;

/// A GGML tensor type this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl GgmlType {
    /// From the type id in a GGUF tensor record; other types are named in the error.
    pub fn from_id(id: u32) -> Result<Self> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            30 => BF16,
            other => {
                let name = match other {
                    9 => "Q8_1",
                    15 => "Q8_K",
                    16..=23 | 29 => "an IQ type",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    34 | 35 => "a TQ type",
                    39 => "MXFP4",
                    _ => "unknown",
                };
                bail!("GGML type {other} ({name}) is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K are)")
            }
        })
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
        }
    }

    /// Bytes that `n` values take; None when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let (values, bytes) = self.block();
        if n.is_multiple_of(values) {
            (n / values).checked_mul(bytes)
        } else {
            None
        }
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `ty`) into float32 values.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    let (per, size) = ty.block();
    let mut out = Vec::with_capacity(data.len() / size * per);
    for b in data.chunks_exact(size) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(h(b, 0)),
            GgmlType::BF16 => out.push(f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
            GgmlType::Q4_0 => {
                let (d, qs) = (h(b, 0), &b[2..18]);
                out.extend(qs.iter().map(|q| d * ((q & 0xF) as i8 - 8) as f32));
                out.extend(qs.iter().map(|q| d * ((q >> 4) as i8 - 8) as f32));
            }
            GgmlType::Q4_1 => {
                let (d, m, qs) = (h(b, 0), h(b, 2), &b[4..20]);
                out.extend(qs.iter().map(|q| d * (q & 0xF) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let one = ty == GgmlType::Q5_1;
                let (d, m) = (h(b, 0), if one { h(b, 2) } else { 0.0 });
                let at = if one { 4 } else { 2 };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                for i in 0..32 {
                    let low = if i < 16 { qs[i] & 0xF } else { qs[i - 16] >> 4 };
                    let q = low | ((((qh >> i) & 1) as u8) << 4);
                    out.push(if one { d * q as f32 + m } else { d * (q as i8 - 16) as f32 });
                }
            }
            GgmlType::Q8_0 => {
                let d = h(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
            GgmlType::Q2K => {
                let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], h(b, 80), h(b, 82));
                for e in 0..256 {
                    let (half, shift, l) = (e / 128, (e % 128) / 32 * 2, e % 32);
                    let sc = scales[e / 16];
                    let q = (qs[half * 32 + l] >> shift) & 3;
                    out.push((d * (sc & 0xF) as f32) * q as f32 - dmin * (sc >> 4) as f32);
                }
            }
            GgmlType::Q3K => {
                let (hmask, qs, sc, d) = (&b[0..32], &b[32..96], &b[96..108], h(b, 108));
                for e in 0..256 {
                    let k = e / 16;
                    let low = if k < 8 { sc[k] & 0xF } else { sc[k - 8] >> 4 };
                    let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
                    let scale = (low | (high << 4)) as i8 - 32;
                    let (half, shift, l) = (e / 128, (e % 128) / 32 * 2, e % 32);
                    let ql = ((qs[half * 32 + l] >> shift) & 3) as i8;
                    let hbit = (hmask[l] >> (e / 32)) & 1;
                    let q = ql - (((hbit ^ 1) << 2) as i8);
                    out.push((d * scale as f32) * q as f32);
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin, scales) = (h(b, 0), h(b, 2), &b[4..16]);
                let five = ty == GgmlType::Q5K;
                let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for e in 0..256 {
                    let (sc, m) = scale_min_k4(e / 32, scales);
                    let (chunk, nib, l) = (e / 64, (e % 64) / 32, e % 32);
                    let mut q = (qs[chunk * 32 + l] >> (4 * nib)) & 0xF;
                    if five {
                        q |= ((qh[l] >> (e / 32)) & 1) << 4;
                    }
                    out.push((d * sc as f32) * q as f32 - dmin * m as f32);
                }
            }
            GgmlType::Q6K => {
                let (ql, qh, scales, d) = (&b[0..128], &b[128..192], &b[192..208], h(b, 208));
                for e in 0..256 {
                    let (g, l) = (e / 32, e % 32);
                    let (half, nib) = (g / 4, (g % 4) / 2);
                    let low = (ql[half * 64 + (g % 2) * 32 + l] >> (4 * nib)) & 0xF;
                    let high = (qh[half * 32 + l] >> (2 * (g % 4))) & 3;
                    let q = (low | (high << 4)) as i8 - 32;
                    out.push((d * scales[e / 16] as i8 as f32) * q as f32);
                }
            }
        }
    }
    out
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K super-block (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_blocks_by_hand() {
        // d = 0.5 (f16 0x3800); values -128..
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[31], 7.5);
        // Q4_0: d = 2, nibbles 0x1 low / 0xF high: (1 - 8) * 2 = -14, (15 - 8) * 2 = 14.
        let mut b = vec![0x00, 0x40];
        b.extend([0xF1u8; 16]);
        let v = dequantize(GgmlType::Q4_0, &b);
        assert_eq!((v[0], v[16], v.len()), (-14.0, 14.0, 32));
    }

    #[test]
    fn unsupported_types_are_named() {
        let e = GgmlType::from_id(9).unwrap_err().to_string();
        assert!(e.contains("Q8_1") && e.contains("not supported"), "{e}");
        assert_eq!(GgmlType::Q6K.bytes_for(512), Some(420));
        assert_eq!(GgmlType::Q4K.bytes_for(100), None);
    }
}
