/* A fake cuFile (built by the tests as libcufile.so.0) that lacks cuFileDriverOpen, as a wrong or
 * partial install would: the probe must name the missing entry point. */
__attribute__((visibility("default"))) int cuFileDriverClose(void) {
    return 0;
}
