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

// Round half away from zero, as the CPU reference's rha: trunc(t + 0.5) for t >= 0, else
// trunc(t - 0.5) (one truncation of the sum with a selected half).
fn round_half_away(t: f32) -> f32 {
    return trunc(t + select(-0.5, 0.5, t >= 0.0));
}

// The bits of an integer-valued n (|n| < 2^22) as two's complement in the low bits of the
// result (mask them), without the clamps that WGSL's f32 -> i32 conversion adds: n + 1.5 * 2^23
// is exact and holds n + 2^22 in the f32's mantissa. For a non-integer n the addition rounds
// to the nearest integer, ties to even, like round().
const INT_MAGIC: f32 = 12582912.0;

fn int_bits(n: f32) -> u32 {
    return bitcast<u32>(n + INT_MAGIC);
}

// f32 (not NaN) -> e4m3fn code: round to nearest even, saturate to +-448 (infinity too), never
// the NaN codes.
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
    // a * 512 is exact, so the addition rounds it once (ties to even), as round() would
    let sub = int_bits(bitcast<f32>(abits) * 512.0) & 0xFFu;
    return sign | select(normal, sub, abits < 0x3C800000u);
}

// Relative half-width of the band that holds both the true quotient x / s and its correctly
// rounded f32 when x * RN(1/s) is known (two roundings of 2^-24 each, plus the final 2^-24,
// with room to spare): 2^-20.
const QUOT_BAND: f32 = 9.5367431640625e-7;

// Whether a finite q lies within twice QUOT_BAND of a rounding tie of e4m3_encode (the only
// places where its code changes): the encoder is monotone, so a quotient and its estimate q
// on the same side of every tie get one code. One test on 20 bits for both ranges, without
// branches: whether they lie within 32 units of half (0x80000), i.e. minus 0x7FFE0 (mod 2^20)
// at most 64. Normal range: the 20 bits of |q| below the 3 kept ones (the band is at most
// 16 units there). Below 2^-6, where the codes step by 2^-9: v = |q| * 512 (exact, in
// [0, 8)) plus 8 has the f32 exponent of [8, 16), so its 20 low bits are v's fraction in
// units of 2^-20, rounded by at most half a unit; the ties are at fraction one half, and the
// band (v 2^-19 < 16 units) plus that rounding lies well within 32 units. From 448 up:
// saturated, no tie. A wider test only sends more elements to the exact path.
fn e4m3_near_tie(q: f32) -> bool {
    let a = abs(q);
    let bits = select(bitcast<u32>(a), bitcast<u32>(a * 512.0 + 8.0), a < 0.015625);
    return (a < 448.0) & (((bits - 0x7FFE0u) & 0xFFFFFu) <= 64u);
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
// too. The significand quotient t = ma 2^23 / mb (in [2^23, 2^24)) is estimated by `/` (its
// error: 2.5 ULP of the quotient, half an ULP of f32(ma), so |estimate - t| < 6). The exact
// remainder R = ma 2^23 - q mb of the truncated estimate q then lies in (-7 mb, 7 mb), within
// an i32, so its low word (from wrapping u32 products) is all of it; floor(R / mb) comes from
// a float quotient that is off by at most one and is settled by the remainder (twice, for
// margin). No loop over candidates, so it also serves the per-tensor modes' per-element exact
// path. Rounded to nearest even from the final remainder in [0, mb). Falls back to `/` for
// zero/subnormal operands and quotients outside the normal range.
fn div_rn(a: f32, b: f32) -> f32 {
    let d = div_in(a, b);
    if (!d.ok) {
        return a / b;
    }
    let fb = f32(d.mb);
    let mb = i32(d.mb);
    var q = u32(f32(d.ma) / fb * 8388608.0);
    // R mod 2^32 (u32 arithmetic wraps) is R itself, |R| < 2^27.
    let r0 = i32((d.ma << 23u) - q * d.mb);
    var k = i32(floor(f32(r0) / fb));
    var r = r0 - k * mb;
    for (var i = 0; i < 2; i++) {
        if (r < 0) {
            k -= 1;
            r += mb;
        } else if (r >= mb) {
            k += 1;
            r -= mb;
        }
    }
    q = u32(i32(q) + k);
    let ru = u32(r);
    // Round to nearest even: up when the remainder is over half of mb, or exactly half and q odd.
    if (2u * ru > d.mb || (2u * ru == d.mb && (q & 1u) == 1u)) {
        q += 1u;
    }
    return div_out(a, b, q, d.e);
}

