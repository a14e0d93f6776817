// common/pack.wgsl — number-format helpers shared by codecs and the FP8 output path:
// four signed bytes of a word, and OCP e4m3fn encode/decode (no native fp8 type in WGSL).

// Four i8 codes of a word, element 4j in bits 0..7.
fn unpack_i8x4(w: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(
        bitcast<i32>(w << 24u) >> 24u,
        bitcast<i32>(w << 16u) >> 24u,
        bitcast<i32>(w << 8u) >> 24u,
        bitcast<i32>(w) >> 24u,
    ));
}

// e4m3fn code -> f32. Subnormals (exponent 0) are m * 2^-9.
fn e4m3_decode(c: u32) -> f32 {
    let s = select(1.0, -1.0, (c & 0x80u) != 0u);
    let e = (c >> 3u) & 0xFu;
    let m = f32(c & 7u);
    if (e == 0u) {
        return s * m * (1.0 / 512.0);
    }
    return s * (1.0 + m * 0.125) * exp2(f32(i32(e) - 7));
}

fn e4m3_decode4(w: u32) -> vec4<f32> {
    return vec4<f32>(e4m3_decode(w & 0xFFu), e4m3_decode((w >> 8u) & 0xFFu),
                     e4m3_decode((w >> 16u) & 0xFFu), e4m3_decode(w >> 24u));
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
