#ifndef CFASTCGI_SHIM_H
#define CFASTCGI_SHIM_H
// fcgiapp.h only: fcgi_stdio.h would redefine printf and friends.
#include <fcgiapp.h>
#endif
