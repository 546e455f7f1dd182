# DIFFTRAIN_NCCL=AUTO|ON|OFF. Defines the target difftrain_nccl (NCCL + the CUDA runtime) and
# DIFFTRAIN_HAVE_NCCL when the NCCL backend is built.
#
# LibTorch loads its own NCCL and CUDA runtime (the torch wheel's nvidia/* packages, or the
# libraries inside an unpacked LibTorch). We link exactly those, so one process holds one NCCL;
# the CUDA toolkit is used for headers only. The NCCL header must match the library's version.
set(DIFFTRAIN_HAVE_NCCL OFF)
if(TARGET c10_cuda OR C10_CUDA_LIBRARY)
  set(DIFFTRAIN_TORCH_IS_CUDA ON)
else()
  set(DIFFTRAIN_TORCH_IS_CUDA OFF)
endif()

# The CUDA runtime LibTorch loads (the wheel's nvidia/cu*/lib, or LibTorch's lib/). LibTorch's
# CMake config points torch::cudart at the toolkit's copy; retarget it, so that the process holds
# one libcudart and the runtime search path has no conflict.
if(DIFFTRAIN_TORCH_IS_CUDA)
  get_filename_component(_site ${TORCH_INSTALL_PREFIX}/.. ABSOLUTE)
  file(GLOB _nvidia_lib_dirs ${_site}/nvidia/*/lib)
  find_library(DIFFTRAIN_CUDART_LIBRARY NAMES libcudart.so.13 libcudart.so.12 cudart
               HINTS ${_nvidia_lib_dirs} ${TORCH_INSTALL_PREFIX}/lib NO_DEFAULT_PATH)
  if(DIFFTRAIN_CUDART_LIBRARY AND TARGET torch::cudart)
    set_property(TARGET torch::cudart PROPERTY INTERFACE_LINK_LIBRARIES ${DIFFTRAIN_CUDART_LIBRARY})
  elseif(NOT DIFFTRAIN_CUDART_LIBRARY)
    set(DIFFTRAIN_CUDART_LIBRARY CUDA::cudart)
  endif()
endif()

if(DIFFTRAIN_NCCL STREQUAL "OFF")
  message(STATUS "NCCL backend: off (DIFFTRAIN_NCCL=OFF)")
  return()
endif()
if(NOT DIFFTRAIN_TORCH_IS_CUDA)
  if(DIFFTRAIN_NCCL STREQUAL "ON")
    message(FATAL_ERROR "DIFFTRAIN_NCCL=ON but LibTorch at ${TORCH_INSTALL_PREFIX} is not a CUDA build")
  endif()
  message(STATUS "NCCL backend: off (LibTorch is a CPU build)")
  return()
endif()

# Where LibTorch's own NCCL lives: the wheel's site-packages/nvidia/nccl, or LibTorch's lib/.
set(_nccl_hints ${NCCL_ROOT} ${_site}/nvidia/nccl ${TORCH_INSTALL_PREFIX})

find_library(DIFFTRAIN_NCCL_LIBRARY NAMES nccl libnccl.so.2
             HINTS ${_nccl_hints} PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
if(NOT DIFFTRAIN_NCCL_LIBRARY)  # e.g. a LibTorch that links the system NCCL
  find_library(DIFFTRAIN_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR})
endif()
find_path(DIFFTRAIN_NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
if(NOT DIFFTRAIN_NCCL_INCLUDE_DIR)
  find_path(DIFFTRAIN_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
endif()

if(NOT DIFFTRAIN_NCCL_LIBRARY OR NOT DIFFTRAIN_NCCL_INCLUDE_DIR)
  if(DIFFTRAIN_NCCL STREQUAL "ON")
    message(FATAL_ERROR "DIFFTRAIN_NCCL=ON but NCCL was not found (library: ${DIFFTRAIN_NCCL_LIBRARY}, "
                        "header: ${DIFFTRAIN_NCCL_INCLUDE_DIR}); set NCCL_ROOT")
  endif()
  message(STATUS "NCCL backend: off (NCCL not found)")
  return()
endif()

# Header version vs library version (ncclGetVersion needs no GPU).
file(STRINGS ${DIFFTRAIN_NCCL_INCLUDE_DIR}/nccl.h _nccl_defs REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) ")
foreach(_part MAJOR MINOR PATCH)
  string(REGEX REPLACE ".*NCCL_${_part} ([0-9]+).*" "\\1" NCCL_${_part} "${_nccl_defs}")
endforeach()
set(DIFFTRAIN_NCCL_HEADER_VERSION ${NCCL_MAJOR}.${NCCL_MINOR}.${NCCL_PATCH})
try_run(_nccl_run _nccl_compile ${CMAKE_BINARY_DIR}/nccl_version_check
        ${CMAKE_CURRENT_LIST_DIR}/nccl_version.cpp
        CMAKE_FLAGS "-DINCLUDE_DIRECTORIES=${DIFFTRAIN_NCCL_INCLUDE_DIR};${CUDAToolkit_INCLUDE_DIRS}"
        LINK_LIBRARIES ${DIFFTRAIN_NCCL_LIBRARY}
        COMPILE_OUTPUT_VARIABLE _nccl_compile_out
        RUN_OUTPUT_VARIABLE DIFFTRAIN_NCCL_LIBRARY_VERSION)
if(NOT _nccl_compile OR NOT _nccl_run EQUAL 0)
  message(FATAL_ERROR "could not query the version of ${DIFFTRAIN_NCCL_LIBRARY}:\n${_nccl_compile_out}")
endif()
string(STRIP "${DIFFTRAIN_NCCL_LIBRARY_VERSION}" DIFFTRAIN_NCCL_LIBRARY_VERSION)
if(NOT DIFFTRAIN_NCCL_LIBRARY_VERSION STREQUAL DIFFTRAIN_NCCL_HEADER_VERSION)
  message(FATAL_ERROR "NCCL header ${DIFFTRAIN_NCCL_INCLUDE_DIR}/nccl.h is version "
                      "${DIFFTRAIN_NCCL_HEADER_VERSION} but ${DIFFTRAIN_NCCL_LIBRARY} is "
                      "${DIFFTRAIN_NCCL_LIBRARY_VERSION}; point NCCL_ROOT at a matching NCCL")
endif()

add_library(difftrain_nccl INTERFACE)
target_include_directories(difftrain_nccl SYSTEM INTERFACE ${DIFFTRAIN_NCCL_INCLUDE_DIR}
                                                           ${CUDAToolkit_INCLUDE_DIRS})
target_link_libraries(difftrain_nccl INTERFACE ${DIFFTRAIN_NCCL_LIBRARY} ${DIFFTRAIN_CUDART_LIBRARY})
target_compile_definitions(difftrain_nccl INTERFACE DIFFTRAIN_HAVE_NCCL=1)
set(DIFFTRAIN_HAVE_NCCL ON)
message(STATUS "NCCL backend: on (${DIFFTRAIN_NCCL_LIBRARY}, version ${DIFFTRAIN_NCCL_LIBRARY_VERSION}; "
               "CUDA runtime ${DIFFTRAIN_CUDART_LIBRARY})")
