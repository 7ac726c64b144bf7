#!/bin/sh
# shout: a plain shell function. The request body arrives on STDIN, the
# request's metadata in Http_* variables, and STDOUT is the response.
echo "$Http_Method $Http_Path${Http_Query:+?$Http_Query}"
tr '[:lower:]' '[:upper:]'
