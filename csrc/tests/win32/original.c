/*
 * Shared memory the plain Win32 way, as the program fastshm grew from does
 * it: OpenFileMapping, or CreateFileMapping over the page file when the name
 * is not there yet, MapViewOfFile, strcpy into the view.  No fastshm code:
 * tests/test_windows.py runs it against fastshm's raw mapping to show both
 * see the same memory.
 *
 *   original NAME TEXT   print what the view holds, copy TEXT into it,
 *                        wait for a line (or EOF) on stdin, print it again
 */
#include <windows.h>
#include <stdio.h>
#include <string.h>

#define BUF_SIZE 1024

int main(int argc, char **argv)
{
    HANDLE hMapFile;
    char *pBuf;
    char line[64];
    int created = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: original NAME TEXT\n");
        return 2;
    }
    hMapFile = OpenFileMappingA(FILE_MAP_ALL_ACCESS, FALSE, argv[1]);
    if (hMapFile == NULL) {
        hMapFile = CreateFileMappingA(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE,
                                      0, BUF_SIZE, argv[1]);
        if (hMapFile == NULL) {
            printf("error=CreateFileMapping %lu\n", GetLastError());
            return 1;
        }
        created = 1;
    }
    pBuf = (char *)MapViewOfFile(hMapFile, FILE_MAP_ALL_ACCESS, 0, 0, BUF_SIZE);
    if (pBuf == NULL) {
        printf("error=MapViewOfFile %lu\n", GetLastError());
        CloseHandle(hMapFile);
        return 1;
    }
    printf("created=%d\n", created);
    printf("read=%.1023s\n", pBuf);
    strcpy(pBuf, argv[2]);
    printf("wrote=1\n");
    fflush(stdout);
    (void)fgets(line, sizeof line, stdin);
    printf("read=%.1023s\n", pBuf);
    fflush(stdout);
    UnmapViewOfFile(pBuf);
    CloseHandle(hMapFile);
    return 0;
}
