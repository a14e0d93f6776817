//! [`Tensor`]: a view of a GPU buffer as a 3-D array of one dtype, and its host-side checks.

use crate::error::{shape, Error, Result};
use crate::types::Dtype;

/// A GPU tensor: a buffer with a dtype and a 3-D shape (row-major, innermost last).
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The buffer (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, e.g. `[num_tokens, num_heads, head_size]`.
    pub shape: [u32; 3],
}

impl<'a> Tensor<'a> {
    /// A tensor view of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, dtype: Dtype, shape: [u32; 3]) -> Self {
        Self {
            buffer,
            dtype,
            shape,
        }
    }

    /// Bytes the shape covers.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().map(|&s| s as u64).product::<u64>() * self.dtype.size() as u64
    }

    /// Checks dtype, the inner two dims, at least `min_rows` rows, buffer size and usage.
    pub fn check(
        &self,
        what: &'static str,
        dtype: Dtype,
        min_rows: u32,
        inner: [u32; 2],
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
        if self.buffer.size() < self.bytes() {
            return Err(Error::InvalidBuffer {
                what,
                detail: format!(
                    "{} bytes, shape {:?} needs {}",
                    self.buffer.size(),
                    self.shape,
                    self.bytes()
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
