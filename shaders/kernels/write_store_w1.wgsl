// kernels/write_store_w1.wgsl — the code stores of the quantizing write kernel
// (kernels/write_rows.wgsl) where a lane's code words need not be whole 16-byte pieces of the
// pools (see kernels/write_store_w4.wgsl): the pools as 4-byte words, one store per word.
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>;

// The lane's NW code words at word w0 of the K or V pool.
fn store_words(is_v: bool, w0: u32, words: array<u32, NW>) {
    for (var w = 0u; w < NW; w++) {
        if (is_v) {
            v_cache[w0 + w] = words[w];
        } else {
            k_cache[w0 + w] = words[w];
        }
    }
}
