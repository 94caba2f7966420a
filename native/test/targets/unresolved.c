/* A library that cannot be loaded with RTLD_NOW: its symbol does not exist anywhere. */
extern int nightfuse_no_such_symbol_anywhere(void);
int uses_missing(void) { return nightfuse_no_such_symbol_anywhere(); }
