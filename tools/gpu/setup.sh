# Source this on the GPU machine, from the project root:  . .gl/setup.sh
# Installs the carried Vulkan loader, then makes sure the NVIDIA Vulkan driver answers headless:
# some machines ship a driver manifest that only works with a display (libGLX_nvidia); then it
# writes one that points at libEGL_nvidia and exports VK_DRIVER_FILES. The probe is our own
# `adapters` example (exit 1 when no Vulkan adapter answers).
for f in .gl/*.deb; do dpkg -x "$f" / ; done
ldconfig
export WGPU_BACKEND=vulkan
if ! ./.gpu-bin/adapters; then
  for lib in /usr/local/nvidia/lib64/libEGL_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.0; do
    [ -e "$lib" ] || continue
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3.0"}}\n' "$lib" > /tmp/nvidia_egl_icd.json
    export VK_DRIVER_FILES=/tmp/nvidia_egl_icd.json VK_ICD_FILENAMES=/tmp/nvidia_egl_icd.json
    ./.gpu-bin/adapters && break
  done
fi
