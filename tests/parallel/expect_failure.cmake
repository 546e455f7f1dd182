# Runs COMMAND (a list joined with "|") and passes only if it exits non-zero within MAX_SECONDS
# and its output matches REGEX: a job that must fail, but fail fast and say why.
#   cmake -DCOMMAND="mpiexec|-n|2|prog|arg" -DREGEX="..." -DMAX_SECONDS=30 -P expect_failure.cmake
string(REPLACE "|" ";" _command "${COMMAND}")
string(TIMESTAMP _start "%s")
execute_process(COMMAND ${_command} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out
                TIMEOUT ${MAX_SECONDS})
string(TIMESTAMP _end "%s")
math(EXPR _elapsed "${_end} - ${_start}")
message("${_out}")
message("exit: ${_rc} after ${_elapsed} s")
if(NOT _rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "did not exit by itself within ${MAX_SECONDS} s: ${_rc}")
endif()
if(_rc EQUAL 0)
  message(FATAL_ERROR "exited 0; expected a failure")
endif()
if(NOT _out MATCHES "${REGEX}")
  message(FATAL_ERROR "output does not match '${REGEX}'")
endif()
