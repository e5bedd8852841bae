# Checks that libraries and test programs really carry a sanitizer's instrumentation:
#   cmake -DNM=<nm> -DSYMBOL=<regex> -DFILES="a;b;..." -P expect_instrumented.cmake
# A file whose symbol table has no match for SYMBOL (e.g. __asan_report_, __tsan_read) was
# compiled without the sanitizer, whatever the canaries say about the flags.
foreach(f IN LISTS FILES)
  execute_process(COMMAND "${NM}" "${f}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_QUIET)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${NM} ${f} failed (${rc})")
  endif()
  if(NOT out MATCHES "${SYMBOL}")
    message(FATAL_ERROR "${f} has no '${SYMBOL}' symbol: built without the sanitizer")
  endif()
  message(STATUS "${f}: instrumented (${SYMBOL})")
endforeach()
