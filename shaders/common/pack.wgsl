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
fn e4m3_encode(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    let sign = (bits >> 24u) & 0x80u;
    let a = abs(x);
    if (a >= 448.0) {
        return sign | 0x7Eu;
    }
    if (a < 0.015625) {
        return sign | u32(round(a * 512.0));
    }
    let abits = bits & 0x7FFFFFFFu;
    let e = (abits >> 23u) - 120u; // biased e4m3 exponent: (e32 - 127) + 7
    let mant = abits & 0x7FFFFFu;
    var m3 = mant >> 20u;
    let rem = mant & 0xFFFFFu;
    if (rem > 0x80000u || (rem == 0x80000u && (m3 & 1u) == 1u)) {
        m3 += 1u;
    }
    return sign | min((e << 3u) + m3, 0x7Eu);
}

// Relative half-width of the band that holds both the true quotient x / s and its correctly
// rounded f32 when x * RN(1/s) is known (two roundings of 2^-24 each, plus the final 2^-24,
// with room to spare): 2^-20.
const QUOT_BAND: f32 = 9.5367431640625e-7;

// a / b correctly rounded (round to nearest even), by integer long division of the
// significands. WGSL's `/` may be off by 2.5 ULP (and `fma` need not be fused), which flips
// truncated codes at integer boundaries (absmax * (1/(absmax/127)) = 126.99999 -> 126); the CPU
// reference divides exactly, so the write kernels divide exactly too. Falls back to `/` for
// zero/subnormal operands and quotients outside the normal range.
fn div_rn(a: f32, b: f32) -> f32 {
    let ab = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    let ea = i32((ab >> 23u) & 0xFFu);
    let eb = i32((bb >> 23u) & 0xFFu);
    if (ea == 0 || eb == 0 || ea == 255 || eb == 255) {
        return a / b;
    }
    var ma = (ab & 0x7FFFFFu) | 0x800000u;
    let mb = (bb & 0x7FFFFFu) | 0x800000u;
    var e = ea - eb;
    if (ma < mb) {
        ma <<= 1u;
        e -= 1;
    }
    var q = 0u;
    var r = ma;
    for (var i = 0; i < 25; i++) {
        q <<= 1u;
        if (r >= mb) {
            r -= mb;
            q |= 1u;
        }
        r <<= 1u;
    }
    let guard = q & 1u;
    q >>= 1u;
    if (guard == 1u && (r != 0u || (q & 1u) == 1u)) {
        q += 1u;
    }
    if (q == 0x1000000u) {
        q >>= 1u;
        e += 1;
    }
    let be = e + 127;
    if (be <= 0 || be >= 255) {
        return a / b;
    }
    return bitcast<f32>(((ab ^ bb) & 0x80000000u) | (u32(be) << 23u) | (q & 0x7FFFFFu));
}
