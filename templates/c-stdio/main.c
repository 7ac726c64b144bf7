/* A wasi:cli command in C: the request body on STDIN, the response on
 * STDOUT. Counts the lines, words and bytes it is given, as JSON. */
#include <ctype.h>
#include <stdio.h>

int main(void) {
    long lines = 0, words = 0, bytes = 0;
    int c, in_word = 0;
    while ((c = getchar()) != EOF) {
        bytes++;
        if (c == '\n')
            lines++;
        if (isspace(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    if (ferror(stdin)) {
        fprintf(stderr, "could not read the request\n");
        return 1;
    }
    printf("{\"lines\":%ld,\"words\":%ld,\"bytes\":%ld}\n", lines, words, bytes);
    return 0;
}
