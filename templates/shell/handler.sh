#!/bin/sh
# The request body on STDIN, the response on STDOUT: one process per request,
# as OpenFaaS's classic watchdog runs it. The request's method, path and
# headers are in the environment (Http_Method, Http_Path, Http_Content_Type...).
name=$(cat)
echo "hello, ${name:-world}"
