# The guide's connection handler, verbatim but for its imports: `shared.*`
# becomes `ratelimiter`, and `logger`, which the guide's module defines
# elsewhere, is defined here.
import logging
import os
from ratelimiter import RateLimitService
from ratelimiter import RateLimitExceededError
from ratelimiter import rate_limit_error_response, error_response

logger = logging.getLogger(__name__)

# Initialize at module level for Lambda container reuse
rate_limit_service = RateLimitService()

def lambda_handler(event, context):
    """Handle WebSocket $connect event."""
    
    # Extract user ID from authorizer context (for speakers)
    authorizer_context = event.get('requestContext', {}).get('authorizer', {})
    user_id = authorizer_context.get('userId')
    
    # Extract IP address
    request_context = event.get('requestContext', {})
    ip_address = request_context.get('identity', {}).get('sourceIp', 'unknown')
    
    try:
        # Check connection attempt rate limit (for all connections)
        rate_limit_service.check_connection_attempt_limit(ip_address)
        
        # For speaker session creation
        if user_id:
            rate_limit_service.check_session_creation_limit(user_id)
            # ... create session logic
        else:
            # For listener joins
            rate_limit_service.check_listener_join_limit(ip_address)
            # ... join session logic
            
    except RateLimitExceededError as e:
        return rate_limit_error_response(e.retry_after)
    except Exception as e:
        logger.error(f"Error: {e}")
        return error_response(500, 'INTERNAL_ERROR', 'Internal server error')
