// kernels/write_store_w4.wgsl — the code stores of the quantizing write kernel
// (kernels/write_rows.wgsl) where a lane's code words are whole 16-byte pieces of the pools:
// the host picks this file where a row's words and a lane's words (NW) are both multiples of
// four (INT8/FP8 rows of any head size the write kernel takes, INT4 rows at 32 elements per
// lane), else kernels/write_store_w1.wgsl. The pools are 16-byte words here, so a row's
// lanes store its codes with one 16-byte store per four words: with four 4-byte stores a
// lane's words each touched every 16-byte piece of the row's stretch, and the stores cost
// INT8 about 1.1 us of 4096 tokens' write on an H200.
@group(0) @binding(5) var<storage, read_write> k_cache: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<vec4<u32>>;

// The lane's NW code words at word w0 of the K or V pool (w0 a multiple of four).
fn store_words(is_v: bool, w0: u32, words: array<u32, NW>) {
    for (var w = 0u; w < NW; w += 4u) {
        let v = vec4<u32>(words[w], words[w + 1u], words[w + 2u], words[w + 3u]);
        let i = (w0 + w) / 4u;
        if (is_v) {
            v_cache[i] = v;
        } else {
            k_cache[i] = v;
        }
    }
}
