//! The bottom of the crate: the storage-format and model-dtype enums and the number formats
//! both the GPU kernels and the CPU reference share. Depends on nothing else in the crate.

/// Storage format of the KV cache (spec §1.1; stable numeric values). Non-exhaustive: modes
/// are added over time.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[repr(u32)]
pub enum KvQuantMode {
    /// Unquantized: the cache holds the model dtype (f16 or f32).
    None = 0,
    /// FP8 e4m3fn with one caller-given scale for K and one for V.
    Fp8PerTensor = 1,
    /// INT8 with one f32 scale per (token, kv head), truncating like upstream.
    Int8PerTokenHead = 2,
    /// FP8 e4m3fn with one f32 scale per (token, kv head).
    Fp8PerTokenHead = 3,
    /// INT4 asymmetric after a randomized Hadamard rotation, zero point in the scale's low bits.
    Int4PerTokenHead = 4,
    /// INT2 Lloyd-Max codebook after a Hadamard rotation.
    Int2PerTokenHead = 5,
    /// INT8 with one caller-given scale for K and one for V.
    Int8PerTensor = 6,
}

impl KvQuantMode {
    /// Every mode of the spec, in enum order. Built from [`KvQuantMode::from_index`], whose
    /// table a new variant must join: [`KvQuantMode::count`] is an exhaustive match, so a new
    /// variant does not compile until it is counted, and then this constant fails to evaluate
    /// (a compile error) until `from_index` names it. No mode can be left out of the suites
    /// that iterate this list.
    pub const ALL: [KvQuantMode; KvQuantMode::count()] = {
        let mut all = [KvQuantMode::None; KvQuantMode::count()];
        let mut i = 0;
        while i < all.len() {
            all[i] = match KvQuantMode::from_index(i as u32) {
                Some(m) => m,
                None => panic!("KvQuantMode::from_index misses a mode that count() includes"),
            };
            i += 1;
        }
        all
    };

    /// The mode with numeric value `v` (spec §1.1), `None` past the last one.
    pub const fn from_index(v: u32) -> Option<KvQuantMode> {
        Some(match v {
            0 => KvQuantMode::None,
            1 => KvQuantMode::Fp8PerTensor,
            2 => KvQuantMode::Int8PerTokenHead,
            3 => KvQuantMode::Fp8PerTokenHead,
            4 => KvQuantMode::Int4PerTokenHead,
            5 => KvQuantMode::Int2PerTokenHead,
            6 => KvQuantMode::Int8PerTensor,
            _ => return None,
        })
    }

    /// Number of modes: one more than the largest numeric value. The exhaustive match here is
    /// the compile-time guard: a new variant fails to build until it is counted.
    pub const fn count() -> usize {
        match KvQuantMode::None {
            KvQuantMode::None
            | KvQuantMode::Fp8PerTensor
            | KvQuantMode::Int8PerTokenHead
            | KvQuantMode::Fp8PerTokenHead
            | KvQuantMode::Int4PerTokenHead
            | KvQuantMode::Int2PerTokenHead
            | KvQuantMode::Int8PerTensor => 7,
        }
    }

    /// Stable lowercase id, equal to the mode's file and folder names.
    pub fn id(self) -> &'static str {
        match self {
            KvQuantMode::None => "none",
            KvQuantMode::Fp8PerTensor => "fp8_per_tensor",
            KvQuantMode::Int8PerTokenHead => "int8_per_token_head",
            KvQuantMode::Fp8PerTokenHead => "fp8_per_token_head",
            KvQuantMode::Int4PerTokenHead => "int4_per_token_head",
            KvQuantMode::Int2PerTokenHead => "int2_per_token_head",
            KvQuantMode::Int8PerTensor => "int8_per_tensor",
        }
    }
}

/// Model dtype: Q, K/V inputs, output, and the cache of mode `none`.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Dtype {
    /// IEEE half, two per u32 word (element 2i in the low half). Arithmetic stays f32, so this
    /// needs no `SHADER_F16`.
    F16,
    /// IEEE single.
    F32,
    /// bfloat16 bit patterns, two per u32 word (element 2i in the low half); read exactly as
    /// `bits << 16`, written rounded to nearest even from f32 (NaN stays NaN). Arithmetic stays
    /// f32.
    Bf16,
    /// OCP e4m3fn codes, four per u32 word: an attention *output* format (`output_scale`),
    /// never a model dtype.
    Fp8E4m3,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u32 {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
            Dtype::Fp8E4m3 => 1,
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Fp8E4m3 => "fp8e4m3",
        }
    }

    /// Rounds an f64 to this dtype and back (what storing it in a buffer does).
    pub fn round(self, x: f64) -> f64 {
        match self {
            Dtype::F16 => half::f16::from_f64(x).to_f64(),
            Dtype::F32 => x as f32 as f64,
            // f32 first, then bf16 round-to-nearest-even: what the kernels do with f32 values.
            Dtype::Bf16 => half::bf16::from_f32(x as f32).to_f64(),
            Dtype::Fp8E4m3 => fp8_e4m3_decode(fp8_e4m3_encode(x as f32)) as f64,
        }
    }

    /// Encodes values as bytes of this dtype.
    pub fn encode(self, xs: &[f64]) -> Vec<u8> {
        match self {
            Dtype::F16 => xs
                .iter()
                .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
                .collect(),
            Dtype::F32 => xs.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            Dtype::Bf16 => xs
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x as f32).to_le_bytes())
                .collect(),
            Dtype::Fp8E4m3 => xs.iter().map(|&x| fp8_e4m3_encode(x as f32)).collect(),
        }
    }

    /// Decodes bytes of this dtype.
    pub fn decode(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::Fp8E4m3 => bytes.iter().map(|&c| fp8_e4m3_decode(c) as f64).collect(),
        }
    }
}

/// Largest finite e4m3fn value.
pub const FP8_MAX: f32 = 448.0;

/// f32 → e4m3fn code, round to nearest even, saturating to ±448; never returns the NaN codes
/// 0x7F/0xFF. NaN input gives 0 (the write path cleans NaN to 0 before encoding, spec §10.7).
pub fn fp8_e4m3_encode(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= FP8_MAX {
        return sign | 0x7E;
    }
    if a < 2f32.powi(-6) {
        // subnormal: m * 2^-9; a * 512 is exact, round half to even
        let m = (a * 512.0).round_ties_even() as u8;
        return sign | m;
    }
    let bits = a.to_bits();
    let e = (bits >> 23) as i32 - 127;
    let mant = bits & 0x7F_FFFF;
    let mut m3 = mant >> 20;
    let rem = mant & 0xF_FFFF;
    if rem > 0x8_0000 || (rem == 0x8_0000 && m3 & 1 == 1) {
        m3 += 1;
    }
    let code = (((e + 7) as u32) << 3) + m3;
    sign | code.min(0x7E) as u8
}

/// e4m3fn code → f32 (0x7F/0xFF, never stored, decode as ±480).
pub fn fp8_e4m3_decode(c: u8) -> f32 {
    let s = if c & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((c >> 3) & 0xF) as i32;
    let m = (c & 7) as f32;
    if e == 0 {
        s * m / 512.0
    } else {
        s * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}
