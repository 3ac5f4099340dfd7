# The guide's heartbeat handler, verbatim but for its imports: `shared.*`
# becomes `ratelimiter`.
from ratelimiter import RateLimitService
from ratelimiter import RateLimitExceededError
from ratelimiter import rate_limit_error_response

rate_limit_service = RateLimitService()

def lambda_handler(event, context):
    """Handle heartbeat messages."""
    
    connection_id = event['requestContext']['connectionId']
    
    try:
        # Check heartbeat rate limit
        rate_limit_service.check_heartbeat_limit(connection_id)
        
        # Send heartbeat acknowledgment
        # ... heartbeat logic
        
        return {'statusCode': 200}
        
    except RateLimitExceededError as e:
        return rate_limit_error_response(e.retry_after)
