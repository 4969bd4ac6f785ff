/* What is left of the host-namespace bridge code (replaced by net/netns.h): the length of
 * a job id, which runstate.c still takes from here. Remove this header once runstate.h
 * defines its own. */
#pragma once

#define NET_JOB_ID_LEN 8 /* hex chars of a job id */
