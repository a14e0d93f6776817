// modes/int8_per_tensor/decode.wgsl — read contract v2. INT8 per-tensor: four i8 codes per
// word (element 4j in bits 0..7, unpacked with unpack4xI8), one caller-given scale for K and
// one for V.
// #include "common/no_zero_point.wgsl"
// #include "common/tile_raw.wgsl"
const K_EPW: u32 = 4u;
const V_EPW: u32 = 4u;

fn k_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(w.x));
}

fn v_raw4(w: vec4<u32>, sub: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(w.x));
}

fn k_row_scale(row: u32) -> f32 {
    return ly.k_tensor_scale;
}

fn v_row_scale(row: u32) -> f32 {
    return ly.v_tensor_scale;
}
