// common/no_zero_point.wgsl — the read contract's zero-point part for symmetric modes (every
// mode but those with a zero point includes it): no zero point on K or V rows.
const K_HAS_ZERO: bool = false;
const V_HAS_ZERO: bool = false;

fn k_row_zero(row: u32) -> f32 {
    return 0.0;
}

fn v_row_zero(row: u32) -> f32 {
    return 0.0;
}
