//! Binding helpers: layout entries, whole-buffer bind group entries, and dispatch grids within
//! the adapter's per-dimension limit.

/// A uniform-buffer layout entry.
pub fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A storage-buffer layout entry.
pub fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// A whole-buffer bind group entry.
pub fn bind(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// A bind group entry of any resource.
pub fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}

/// The first `bytes` of `buffer` (rounded up to 4) as a binding.
pub fn exact(buffer: &wgpu::Buffer, bytes: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: std::num::NonZeroU64::new(bytes.max(4).next_multiple_of(4)),
    })
}

/// Splits `groups` workgroups into an (x, y) grid within the per-dimension limit.
pub fn grid_2d(groups: u64, max_dim: u32) -> (u32, u32) {
    let max_dim = max_dim.max(1) as u64;
    if groups <= max_dim {
        return (groups.max(1) as u32, 1);
    }
    let y = groups.div_ceil(max_dim);
    let x = groups.div_ceil(y);
    (x as u32, y as u32)
}
