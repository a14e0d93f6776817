// common/pack.wgsl — number-format helpers shared by codecs and the FP8 output path:
// e4m3fn codes to f16 by bit placement, OCP e4m3fn encode (no native fp8 type in WGSL) and
// exact division.

// Four e4m3fn codes of a word (element 4j in bits 0..7) as f32 values times 2^-8, by bit
// placement alone: a code's exponent and mantissa bits (eeee mmm) placed at the top of an f16
// (sign at bit 15, eeee mmm at bits 13..7) make the f16 whose value is the code's value times
// 2^(7-15) = 2^-8, for normal and subnormal codes alike (e4m3 subnormals land on f16
// subnormals, which unpack2x16float converts exactly). The read contract folds 2^8 into the
// row scale (E4M3_RAW_SCALE). The NaN codes are never stored (spec §10.7).
const E4M3_RAW_SCALE: f32 = 256.0;

fn e4m3_raw4(w: u32) -> vec4<f32> {
    // bytes 0 and 2 into the two halves of one word, bytes 1 and 3 into another
    let even = ((w & 0x007F007Fu) << 7u) | ((w & 0x00800080u) << 8u);
    let odd = ((w >> 1u) & 0x3F803F80u) | (w & 0x80008000u);
    let a = unpack2x16float(even);
    let b = unpack2x16float(odd);
    return vec4<f32>(a.x, b.x, a.y, b.y);
}

// f32 (finite) -> e4m3fn code: round to nearest even, saturate to +-448, never the NaN codes.
// Without branches: the normal range rounds by one integer add on the f32's bits (the carry
// runs into the exponent), 2^-6 and below is a multiple of 2^-9 (round() ties to even), and
// the minimum with 0x7E saturates (every f32 from 448 up maps to 0x7E or above).
fn e4m3_encode(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 24u) & 0x80u;
    let abits = bits & 0x7FFFFFFFu;
    let r = abits + 0x7FFFFu + ((abits >> 20u) & 1u);
    // (biased f32 exponent - 120) << 3 | 3 mantissa bits, from 2^-6 = 0x3C800000 up
    let normal = min((r >> 20u) - 960u, 0x7Eu);
    let sub = u32(round(bitcast<f32>(abits) * 512.0));
    return sign | select(normal, sub, abits < 0x3C800000u);
}

// Relative half-width of the band that holds both the true quotient x / s and its correctly
// rounded f32 when x * RN(1/s) is known (two roundings of 2^-24 each, plus the final 2^-24,
// with room to spare): 2^-20.
const QUOT_BAND: f32 = 9.5367431640625e-7;

// Whether a finite q lies within twice QUOT_BAND of a rounding tie of e4m3_encode (the only
// places where its code changes): the encoder is monotone, so a quotient and its estimate q
// on the same side of every tie get one code. Normal range: the 20 bits below the 3 kept
// ones within 32 units of half (the band is at most 16 units there); below 2^-6:
// a * 512 (exact) within 2^-19 of its tie n + 0.5; from 448 up: saturated, no tie.
fn e4m3_near_tie(q: f32) -> bool {
    let a = abs(q);
    if (a >= 448.0) {
        return false;
    }
    if (a < 0.015625) {
        let v = a * 512.0;
        return abs(v - floor(v) - 0.5) <= v * (2.0 * QUOT_BAND);
    }
    let rem = i32(bitcast<u32>(a) & 0xFFFFFu);
    return abs(rem - 0x80000) <= 32;
}

// x * y exactly, for x, y < 2^25: (low word, high word) of the 50-bit product, from 16-bit
// limbs (WGSL has no 64-bit integers).
fn mul_wide(x: u32, y: u32) -> vec2<u32> {
    let x0 = x & 0xFFFFu;
    let x1 = x >> 16u;
    let y0 = y & 0xFFFFu;
    let y1 = y >> 16u;
    let p00 = x0 * y0;
    let mid = x0 * y1 + x1 * y0; // < 2^27
    let lo = p00 + (mid << 16u);
    return vec2<u32>(lo, x1 * y1 + (mid >> 16u) + select(0u, 1u, lo < p00));
}

// The operands of an exact division: significands ma (>= mb, so that the quotient of
// significands is in [1, 2)), mb and the quotient's unbiased exponent; ok is false for
// zero/subnormal/non-finite operands (the caller then takes `/`).
struct DivIn {
    ok: bool,
    ma: u32,
    mb: u32,
    e: i32,
}

fn div_in(a: f32, b: f32) -> DivIn {
    let ab = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let ea = i32((ab >> 23u) & 0xFFu);
    let eb = i32((bb >> 23u) & 0xFFu);
    var d: DivIn;
    d.ok = !(ea == 0 || eb == 0 || ea == 255 || eb == 255);
    d.ma = (ab & 0x7FFFFFu) | 0x800000u;
    d.mb = (bb & 0x7FFFFFu) | 0x800000u;
    d.e = ea - eb;
    if (d.ma < d.mb) {
        d.ma <<= 1u;
        d.e -= 1;
    }
    return d;
}

// The quotient from its rounded 24-bit significand q (2^24 after a carry) and exponent e; `/`
// when it leaves the normal range.
fn div_out(a: f32, b: f32, q_in: u32, e_in: i32) -> f32 {
    var q = q_in;
    var e = e_in;
    if (q == 0x1000000u) {
        q >>= 1u;
        e += 1;
    }
    let be = e + 127;
    if (be <= 0 || be >= 255) {
        return a / b;
    }
    let sign = (bitcast<u32>(a) ^ bitcast<u32>(b)) & 0x80000000u;
    return bitcast<f32>(sign | (u32(be) << 23u) | (q & 0x7FFFFFu));
}

// a / b correctly rounded (round to nearest even). WGSL's `/` may be off by 2.5 ULP (and `fma`
// need not be fused), which flips truncated codes at integer boundaries (absmax * (1/(absmax/127))
// = 126.99999 -> 126); the CPU reference divides exactly, so the write kernels divide exactly
// too. The significand quotient t = ma 2^23 / mb (in [2^23, 2^24)) is estimated by `/`, its
// floor q then settled by exact integer products (the remainder ma 2^23 - q mb must lie in
// [0, mb)), and rounded to nearest even from the remainder. Falls back to `/` for
// zero/subnormal operands and quotients outside the normal range.
fn div_rn(a: f32, b: f32) -> f32 {
    let d = div_in(a, b);
    if (!d.ok) {
        return a / b;
    }
    // ma 2^23 as (low, high) words; ma < 2^25.
    let n_lo = d.ma << 23u;
    let n_hi = d.ma >> 9u;
    // The estimate is within a few units of t (both operands are exact in f32).
    var q = u32(f32(d.ma) / f32(d.mb) * 8388608.0);
    var r = 0u;
    for (var i = 0; i < 8; i++) {
        let p = mul_wide(q, d.mb);
        let d_lo = n_lo - p.x;
        let d_hi = i32(n_hi) - i32(p.y) - select(0, 1, n_lo < p.x);
        if (d_hi < 0) {
            q -= 1u;
        } else if (d_hi > 0 || d_lo >= d.mb) {
            q += 1u;
        } else {
            r = d_lo;
            break;
        }
    }
    // Round to nearest even: up when the remainder is over half of mb, or exactly half and q odd.
    if (2u * r > d.mb || (2u * r == d.mb && (q & 1u) == 1u)) {
        q += 1u;
    }
    return div_out(a, b, q, d.e);
}

// div_rn's result in less code (the 25-step long division of the significands): for a rarely
// taken path that the kernel expands once per element (the per-tensor modes' exact fallback),
// where div_rn's larger body measured slower on an H200 (int8_per_tensor 45.5 -> 54.9 us).
fn div_rn_compact(a: f32, b: f32) -> f32 {
    let d = div_in(a, b);
    if (!d.ok) {
        return a / b;
    }
    var q = 0u;
    var r = d.ma;
    for (var i = 0; i < 25; i++) {
        q <<= 1u;
        if (r >= d.mb) {
            r -= d.mb;
            q |= 1u;
        }
        r <<= 1u;
    }
    let guard = q & 1u;
    q >>= 1u;
    if (guard == 1u && (r != 0u || (q & 1u) == 1u)) {
        q += 1u;
    }
    return div_out(a, b, q, d.e);
}
