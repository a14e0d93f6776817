//! Lists the adapters wgpu finds (name, backend, type, driver) and exits with status 1 when
//! none is a real or software Vulkan/Metal/DX12 device. The GPU machine's setup script uses it
//! to pick a working driver manifest.
//!
//!   cargo run --example adapters

fn main() {
    let instance = quantkv::wgpu::Instance::new(
        quantkv::wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
    );
    let adapters = pollster::block_on(instance.enumerate_adapters(quantkv::wgpu::Backends::all()));
    let mut usable = 0;
    for a in &adapters {
        let i = a.get_info();
        println!(
            "{} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        );
        if i.backend != quantkv::wgpu::Backend::Gl {
            usable += 1;
        }
    }
    if usable == 0 {
        eprintln!("no Vulkan, Metal or DX12 adapter found");
        std::process::exit(1);
    }
}
