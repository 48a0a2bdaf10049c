/*
 * alarmgw_acl: which subscriptions the broker grants, for Mosquitto 2.0 (plugin API v5).
 *
 * Mosquitto 2.0's acl_file grants every SUBSCRIBE and only filters messages when they are
 * delivered. A shared subscription is then still honoured: a gateway joining the center's
 * group "$share/center/..." receives its turn of the round-robin, the ACL drops those
 * messages, and the center never sees them. This plugin decides SUBSCRIBE requests
 * (refused: MQTT 5 SUBACK reason 0x87, 3.1.1 0x80) and leaves publish and delivery checks
 * to acl_file (it answers "defer" for those).
 *
 * Rules, with the certificate CN as the user name (use_identity_as_username) and P the
 * topic prefix:
 *   - a center identity (plugin_opt_centers, default "center") may subscribe to
 *     P/{site}/{gw}/event, heartbeat and state, where {site} and {gw} are "+" or one topic
 *     level, plainly or through a shared subscription "$share/{group}/...";
 *   - any other identity (a gateway, CN "{site}/{gw}") only to P/{CN}/ack, not shared;
 *   - a client without a user name to nothing.
 *
 * Build (Debian: apt-get install gcc mosquitto-dev):
 *   gcc -O2 -Wall -shared -fPIC -o alarmgw_acl.so alarmgw_acl.c
 * Options (mosquitto.conf, after the "plugin" line):
 *   plugin_opt_prefix schoolalarm/v1      the [mqtt] prefix of gateways and center
 *   plugin_opt_centers center center-2     the CNs of command-center certificates
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define MAX_CENTERS 16

struct acl_options {
	char *prefix;
	char *centers[MAX_CENTERS];
	int center_count;
};

static mosquitto_plugin_id_t *plugin_id;
static struct acl_options opts;

/* One topic level: not empty, no wildcard, no separator. */
static bool is_level(const char *s, size_t len)
{
	if(len == 0) return false;
	for(size_t i = 0; i < len; i++){
		if(s[i] == '/' || s[i] == '+' || s[i] == '#') return false;
	}
	return true;
}

static bool is_center(const char *username)
{
	for(int i = 0; i < opts.center_count; i++){
		if(strcmp(username, opts.centers[i]) == 0) return true;
	}
	return false;
}

/* "P/{site}/{gw}/{kind}" with {site}, {gw} each "+" or one level and {kind} one of the
 * three topics gateways publish. */
static bool center_may_read(const char *filter)
{
	size_t plen = strlen(opts.prefix);
	if(strncmp(filter, opts.prefix, plen) != 0 || filter[plen] != '/') return false;
	const char *rest = filter + plen + 1;
	for(int level = 0; level < 2; level++){
		const char *slash = strchr(rest, '/');
		if(slash == NULL) return false;
		size_t len = (size_t)(slash - rest);
		if(!(len == 1 && rest[0] == '+') && !is_level(rest, len)) return false;
		rest = slash + 1;
	}
	return strcmp(rest, "event") == 0 || strcmp(rest, "heartbeat") == 0
		|| strcmp(rest, "state") == 0;
}

/* Exactly "P/{username}/ack", for a user name without wildcards. */
static bool is_own_ack(const char *filter, const char *username)
{
	if(strpbrk(username, "+#") != NULL) return false;
	size_t plen = strlen(opts.prefix);
	size_t ulen = strlen(username);
	return strncmp(filter, opts.prefix, plen) == 0 && filter[plen] == '/'
		&& strncmp(filter + plen + 1, username, ulen) == 0
		&& strcmp(filter + plen + 1 + ulen, "/ack") == 0;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;

	const char *username = mosquitto_client_username(ed->client);
	const char *filter = ed->topic;
	bool shared = false;
	if(username == NULL || filter == NULL) return MOSQ_ERR_ACL_DENIED;
	if(strncmp(filter, "$share/", 7) == 0){
		const char *slash = strchr(filter + 7, '/');
		if(slash == NULL) return MOSQ_ERR_ACL_DENIED;
		filter = slash + 1;
		shared = true;
	}
	bool allowed = is_center(username) ? center_may_read(filter)
		: (!shared && is_own_ack(filter, username));
	if(!allowed){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "alarmgw_acl: refused subscription to %s by %s",
				ed->topic, username);
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	char *centers = NULL;
	(void)userdata;

	plugin_id = identifier;
	opts.prefix = strdup("schoolalarm/v1");
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "prefix") == 0){
			free(opts.prefix);
			opts.prefix = strdup(options[i].value);
		}else if(strcmp(options[i].key, "centers") == 0){
			free(centers);
			centers = strdup(options[i].value);
		}
	}
	if(centers == NULL) centers = strdup("center");
	if(opts.prefix == NULL || centers == NULL) return MOSQ_ERR_NOMEM;
	opts.center_count = 0;
	for(char *save = NULL, *cn = strtok_r(centers, " ,", &save); cn != NULL;
			cn = strtok_r(NULL, " ,", &save)){
		if(opts.center_count == MAX_CENTERS){
			mosquitto_log_printf(MOSQ_LOG_ERR, "alarmgw_acl: more than %d centers", MAX_CENTERS);
			free(centers);
			return MOSQ_ERR_INVAL;
		}
		opts.centers[opts.center_count++] = strdup(cn);
	}
	free(centers);
	mosquitto_log_printf(MOSQ_LOG_INFO, "alarmgw_acl: prefix %s, %d center identities",
			opts.prefix, opts.center_count);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	for(int i = 0; i < opts.center_count; i++) free(opts.centers[i]);
	opts.center_count = 0;
	free(opts.prefix);
	opts.prefix = NULL;
	return MOSQ_ERR_SUCCESS;
}
