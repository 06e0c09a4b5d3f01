/*
 * memory_worker: summarise-and-embed pipeline from Redis to PostgreSQL.
 * Placeholder until its issue lands: it only answers --help and --version.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("memory_worker %s\n", PROJECT_VERSION);
        return 0;
    }
    printf("Usage: memory_worker [--help] [--version]\n"
           "Not implemented yet: see the memory_worker issue.\n");
    return argc > 1 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
