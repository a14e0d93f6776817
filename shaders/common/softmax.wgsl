// common/softmax.wgsl — the score sentinel and guarded exponentials every attention kernel and
// the split-K reduce share. A masked score is NEG (-f32 max); a real score is clamped into
// [-REAL_MAX, REAL_MAX], so no finite score, whatever its magnitude (softmax_scale 1e30, say),
// is ever taken for a masked one. Differences are formed so they never overflow to an
// infinity (WGSL may assume finite math).
const NEG: f32 = -3.4028235e38;
const NEG_HALF: f32 = -3.3e38; // anything above is a real score
const REAL_MAX: f32 = 3.2e38;

fn real_score(x: f32) -> f32 {
    return clamp(x, -REAL_MAX, REAL_MAX);
}

// exp(a - b) for a <= b (b a running maximum): halves first, so the difference of any two
// finite values stays finite; 0 once it is far below f32's smallest exp.
fn exp_diff(a: f32, b: f32) -> f32 {
    let h = a * 0.5 - b * 0.5;
    return select(exp(h + h), 0.0, h < -64.0);
}

// exp_diff of four values.
fn exp_diff4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let h = a * 0.5 - b * 0.5;
    return select(exp(h + h), vec4<f32>(0.0), h < vec4<f32>(-64.0));
}
