# Runs a canary and checks that its sanitizer caught it:
#   cmake -DCANARY=<exe> -DEXPECT=<regex> [-DMUST_HALT=ON] -P expect_report.cmake
# Passes only if the canary exits non-zero and its output matches EXPECT. With MUST_HALT (ASan,
# UBSan built with -fno-sanitize-recover) it must also never print "canary survived", the line
# after the planted bug: reaching it means the sanitizer reported and let the program go on.
# TSan always carries on after a report and fails the exit status at the end, so its canary
# is built without MUST_HALT.
execute_process(COMMAND "${CANARY}" RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "canary ${CANARY} exited 0: the sanitizer is not active (or it reported and carried on)\n${all}")
endif()
if(NOT all MATCHES "${EXPECT}")
  message(FATAL_ERROR "canary ${CANARY} exited ${rc} without the report '${EXPECT}'\n${all}")
endif()
if(MUST_HALT AND all MATCHES "canary survived")
  message(FATAL_ERROR "canary ${CANARY} ran past its bug (recoverable sanitizer?)\n${all}")
endif()
string(REGEX MATCH "${EXPECT}[^\n]*" line "${all}")
message(STATUS "canary caught (exit ${rc}): ${line}")
