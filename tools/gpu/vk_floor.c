/* The driver's share of a context's start, without wgpu: times vkCreateInstance, the
   enumeration of physical devices (with their properties and queue families), and
   vkCreateDevice of one compute queue on the first discrete GPU (else the first device),
   with no extensions or features. `examples/cold_start` reports the same three steps through
   wgpu (instance; adapter + device), so the difference is what wgpu and quantkv add.
   Build: cc -O2 -o vk_floor tools/gpu/vk_floor.c -lvulkan   Run: ./vk_floor [repeats] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vulkan/vulkan.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int once(void) {
  double t0 = now_ms();
  VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.apiVersion = VK_API_VERSION_1_3;
  VkInstanceCreateInfo info = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  info.pApplicationInfo = &app;
  VkInstance instance;
  if (vkCreateInstance(&info, NULL, &instance) != VK_SUCCESS) {
    puts("vk_floor: no Vulkan instance");
    return 1;
  }
  double t1 = now_ms();
  uint32_t count = 0;
  vkEnumeratePhysicalDevices(instance, &count, NULL);
  VkPhysicalDevice devices[16];
  if (count > 16) count = 16;
  vkEnumeratePhysicalDevices(instance, &count, devices);
  if (count == 0) {
    puts("vk_floor: no device");
    return 1;
  }
  uint32_t pick = 0;
  for (uint32_t i = 0; i < count; i++) {
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(devices[i], &p);
    if (p.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU) {
      pick = i;
      break;
    }
  }
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(devices[pick], &nq, NULL);
  VkQueueFamilyProperties qf[32];
  if (nq > 32) nq = 32;
  vkGetPhysicalDeviceQueueFamilyProperties(devices[pick], &nq, qf);
  uint32_t family = 0;
  for (uint32_t i = 0; i < nq; i++) {
    if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
      family = i;
      break;
    }
  }
  double t2 = now_ms();
  float prio = 1.0f;
  VkDeviceQueueCreateInfo q = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  q.queueFamilyIndex = family;
  q.queueCount = 1;
  q.pQueuePriorities = &prio;
  VkDeviceCreateInfo d = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  d.queueCreateInfoCount = 1;
  d.pQueueCreateInfos = &q;
  VkDevice device;
  if (vkCreateDevice(devices[pick], &d, NULL, &device) != VK_SUCCESS) {
    puts("vk_floor: vkCreateDevice failed");
    return 1;
  }
  double t3 = now_ms();
  printf("vk_floor: instance %.1f ms, enumerate %.1f ms, device %.1f ms, total %.1f ms\n", t1 - t0,
         t2 - t1, t3 - t2, t3 - t0);
  vkDestroyDevice(device, NULL);
  vkDestroyInstance(instance, NULL);
  return 0;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1;
  /* The first round in a process pays the driver library's load; later rounds in the same
     process do not, so a cold figure needs a fresh process per run (the default). */
  for (int i = 0; i < n; i++) {
    if (once()) return 1;
  }
  return 0;
}
