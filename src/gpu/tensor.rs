//! [`Tensor`]: a view of a GPU buffer as a 3-D array of one dtype, and its host-side checks.

use crate::error::{shape, Error, Result};
use crate::types::Dtype;

/// A GPU tensor view: a buffer, a byte offset, a dtype, a 3-D shape `[rows, heads, dim]` and
/// element strides for rows and heads (the last dimension is contiguous). Views let q, k and v
/// be three views into one fused QKV projection buffer, and `out` a slice of a larger buffer.
///
/// Rules (checked on the host, [`Error::InvalidBuffer`] otherwise): the offset and both
/// strides are multiples of 16 bytes (so the kernels' 16-byte groups stay aligned), every
/// element the call touches lies inside the buffer, and the bound range fits the adapter's
/// storage-binding limit.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, e.g. `[num_tokens, num_heads, head_size]`.
    pub shape: [u32; 3],
    /// Byte offset of element `[0, 0, 0]`.
    pub offset: u64,
    /// Elements between consecutive rows (tokens) and between consecutive heads.
    pub strides: [u32; 2],
}

/// Where a view starts inside its binding, and its strides, in elements (what the kernels'
/// uniforms carry).
#[derive(Clone, Copy, Debug, Default)]
pub struct ViewIndex {
    /// Element offset of `[0, 0, 0]` from the start of the binding.
    pub off: u32,
    /// Row (token) stride in elements.
    pub tok: u32,
    /// Head stride in elements.
    pub head: u32,
}

impl<'a> Tensor<'a> {
    /// A contiguous tensor at the start of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, dtype: Dtype, shape: [u32; 3]) -> Self {
        Self {
            buffer,
            dtype,
            shape,
            offset: 0,
            strides: [shape[1] * shape[2], shape[2]],
        }
    }

    /// A strided view: element `[r, h, i]` at byte `offset + ((r·strides[0] + h·strides[1]) +
    /// i) · dtype size`.
    pub fn view(
        buffer: &'a wgpu::Buffer,
        dtype: Dtype,
        shape: [u32; 3],
        offset: u64,
        strides: [u32; 2],
    ) -> Self {
        Self {
            buffer,
            dtype,
            shape,
            offset,
            strides,
        }
    }

    /// Bytes the shape covers if contiguous.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&s| s as u64).product::<u64>() * self.dtype.size() as u64
    }

    /// One past the last byte the first `rows` rows touch (u64, no overflow for u32 inputs).
    fn end(&self, rows: u32) -> u64 {
        if rows == 0 || self.shape[1] == 0 || self.shape[2] == 0 {
            return self.offset;
        }
        let last = (rows as u64 - 1) * self.strides[0] as u64
            + (self.shape[1] as u64 - 1) * self.strides[1] as u64
            + self.shape[2] as u64;
        self.offset + last * self.dtype.size() as u64
    }

    /// The bound byte range for the first `rows` rows: from the offset rounded down to
    /// `align` to the last touched byte rounded up to 4.
    fn range(&self, rows: u32, align: u64) -> (u64, u64) {
        let base = self.offset / align.max(1) * align.max(1);
        let end = self.end(rows).max(self.offset + 4).next_multiple_of(4);
        (base, end - base)
    }

    /// The binding of the first `rows` rows (exactly the bytes the call reads or writes, from
    /// the offset rounded down to the adapter's storage offset alignment), and the view's
    /// index within it.
    pub fn binding(
        &self,
        rows: u32,
        limits: &wgpu::Limits,
    ) -> (wgpu::BindingResource<'a>, ViewIndex) {
        let align = limits.min_storage_buffer_offset_alignment as u64;
        let (base, size) = self.range(rows, align);
        let es = self.dtype.size() as u64;
        (
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: self.buffer,
                offset: base,
                size: std::num::NonZeroU64::new(size),
            }),
            ViewIndex {
                off: ((self.offset - base) / es) as u32,
                tok: self.strides[0],
                head: self.strides[1],
            },
        )
    }

    /// Checks dtype, the inner two dims, at least `min_rows` rows, the view's alignment and
    /// bounds, the buffer's usage, and that the bound range fits the adapter's storage-binding
    /// limit.
    pub(crate) fn check(
        &self,
        what: &'static str,
        dtype: Dtype,
        min_rows: u32,
        inner: [u32; 2],
        limits: &wgpu::Limits,
    ) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::InvalidArgument {
                what,
                detail: format!(
                    "dtype {:?} does not match the model dtype {dtype:?}",
                    self.dtype
                ),
            });
        }
        if self.shape[1..] != inner || self.shape[0] < min_rows {
            return Err(shape(
                what,
                format!("[>= {min_rows}, {}, {}]", inner[0], inner[1]),
                format!("{:?}", self.shape),
            ));
        }
        let es = self.dtype.size() as u64;
        let [ts, hs] = self.strides;
        let row = self.shape[2] as u64;
        if !self.offset.is_multiple_of(16)
            || !(ts as u64 * es).is_multiple_of(16)
            || !(hs as u64 * es).is_multiple_of(16)
        {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "offset {} bytes and strides {:?} elements must be multiples of 16 bytes",
                    self.offset, self.strides
                ),
            });
        }
        if (self.shape[1] > 1 && (hs as u64) < row)
            || (self.shape[0] > 1 && (ts as u64) < (self.shape[1] as u64 - 1) * hs as u64 + row)
        {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "strides {:?} make rows or heads of shape {:?} overlap",
                    self.strides, self.shape
                ),
            });
        }
        let end = self.end(min_rows).max(self.offset + 4).next_multiple_of(4);
        if self.buffer.size() < end {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "{} bytes; the view (offset {}, strides {:?}, shape {:?}) reaches byte {end}",
                    self.buffer.size(),
                    self.offset,
                    self.strides,
                    self.shape,
                ),
            });
        }
        let (base, bound) = self.range(min_rows, limits.min_storage_buffer_offset_alignment as u64);
        if bound > limits.max_storage_buffer_binding_size
            || (self.offset - base) / es > u32::MAX as u64
        {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "the call binds {bound} bytes, over the adapter's storage-binding limit {}",
                    limits.max_storage_buffer_binding_size
                ),
            });
        }
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidBuffer {
                what,
                detail: "needs STORAGE usage".into(),
            });
        }
        Ok(())
    }
}

/// Rejects any two of `bufs` that are the same buffer ([`Error::Aliased`]).
pub fn distinct(bufs: &[(&'static str, &wgpu::Buffer)]) -> Result<()> {
    for (i, (a, x)) in bufs.iter().enumerate() {
        for (b, y) in &bufs[i + 1..] {
            if x == y {
                return Err(Error::Aliased { a, b });
            }
        }
    }
    Ok(())
}
