// common/tile_raw.wgsl — the read contract's tile form for modes whose raw values are exact in
// f16 (every mode but INT2 includes it): the tiles of the prefill kernel hold the raw values
// themselves, in units of 1. The tile form: raw = tile * TILE_UNIT, every tile value (less
// the zero point over the unit) exact in f16, so f16 tiles hold the cache without rounding.
const TILE_UNIT: f32 = 1.0;

fn k_tile4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return k_raw4(w, sub);
}

fn v_tile4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return v_raw4(w, sub);
}
